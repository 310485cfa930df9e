-- The download portal: wrong-password attempts and lock-outs, one row per link that has seen any.
-- As migrations/sqlite/0002_portal.sql.

CREATE TABLE link_password_guard (
    link_id      TEXT COLLATE "C" PRIMARY KEY,
    failures     BIGINT NOT NULL DEFAULT 0 CHECK (failures >= 0),  -- attempts counted so far
    locked_until TEXT COLLATE "C"                                -- set when failures ran out
);
