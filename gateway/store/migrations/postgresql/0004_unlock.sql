-- Unlocking PPAP: what became of a transfer's encrypted ZIP, and the files extracted from it.
-- As migrations/sqlite/0004_unlock.sql.

CREATE TABLE unlocks (
    transfer_id   TEXT COLLATE "C" PRIMARY KEY,
    state         TEXT COLLATE "C" NOT NULL
                  CHECK (state IN ('unlocked', 'blocked', 'scan_pending', 'refused')),
    source        TEXT COLLATE "C" NOT NULL,
    at            TEXT COLLATE "C" NOT NULL,
    reason        TEXT COLLATE "C" NOT NULL DEFAULT '',
    keep_original BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE extracted_files (
    id           TEXT COLLATE "C" PRIMARY KEY,
    transfer_id  TEXT COLLATE "C" NOT NULL REFERENCES transfers (id),
    source_file  TEXT COLLATE "C" NOT NULL,
    display_name TEXT COLLATE "C" NOT NULL,
    size         BIGINT NOT NULL CHECK (size >= 0),
    sha256       TEXT COLLATE "C" NOT NULL,
    blob_id      TEXT COLLATE "C" NOT NULL UNIQUE,
    wrapped_key  BYTEA NOT NULL,
    position     BIGINT NOT NULL
);
CREATE INDEX extracted_by_transfer ON extracted_files (transfer_id, position);

-- Every mail without attachments asks whether its sender has a transfer waiting for a password.
CREATE INDEX transfers_by_sender ON transfers (lower(sender), created_at);
