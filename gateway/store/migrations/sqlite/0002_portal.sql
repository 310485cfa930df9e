-- The download portal: wrong-password attempts and lock-outs, one row per link that has seen any.
-- A table of its own rather than columns on links, so LinkRow (SELECT * on links) stays as it is.
-- No foreign key, like events: whatever purges links need not know about this table.

CREATE TABLE link_password_guard (
    link_id      TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),  -- attempts counted so far
    locked_until TEXT                                              -- set when failures ran out
);
