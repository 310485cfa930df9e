-- Unlocking PPAP: the state of a transfer whose encrypted ZIP the gateway opened (or tried to),
-- and the files it extracted, stored encrypted like any attachment. Tables of their own, so the
-- row types of transfers and files stay as they are.

CREATE TABLE unlocks (
    transfer_id   TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('unlocked', 'blocked', 'scan_pending', 'refused')),
    source        TEXT NOT NULL,          -- 'password-mail' | 'sender'
    at            TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',  -- refusal reason, or the virus signature when blocked
    keep_original INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE extracted_files (
    id           TEXT PRIMARY KEY,
    transfer_id  TEXT NOT NULL REFERENCES transfers (id),
    source_file  TEXT NOT NULL,           -- the files row of the encrypted ZIP it came from
    display_name TEXT NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    sha256       TEXT NOT NULL,
    blob_id      TEXT NOT NULL UNIQUE,
    wrapped_key  BLOB NOT NULL,
    position     INTEGER NOT NULL
);
CREATE INDEX extracted_by_transfer ON extracted_files (transfer_id, position);

-- Every mail without attachments asks whether its sender has a transfer waiting for a password.
CREATE INDEX transfers_by_sender ON transfers (lower(sender), created_at);
