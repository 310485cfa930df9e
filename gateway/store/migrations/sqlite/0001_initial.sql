-- Initial schema. Timestamps are ISO 8601 UTC text "YYYY-MM-DDTHH:MM:SS.ffffffZ",
-- fixed width, so comparing the text compares the instants.

CREATE TABLE transfers (
    id               TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    sender           TEXT NOT NULL,
    department       TEXT NOT NULL,
    subject          TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'active', 'failed', 'purged')),
    password_channel TEXT NOT NULL,
    password_hash    TEXT,
    password_sealed  BLOB,
    locale           TEXT NOT NULL
);
CREATE INDEX transfers_by_fingerprint ON transfers (fingerprint, created_at);
CREATE INDEX transfers_by_state ON transfers (state, created_at);
CREATE INDEX transfers_by_expiry ON transfers (expires_at);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    transfer_id  TEXT NOT NULL REFERENCES transfers (id),
    display_name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    sha256       TEXT NOT NULL,
    blob_id      TEXT NOT NULL UNIQUE,
    wrapped_key  BLOB NOT NULL,
    position     INTEGER NOT NULL
);
CREATE INDEX files_by_transfer ON files (transfer_id, position);

CREATE TABLE links (
    id             TEXT PRIMARY KEY,
    transfer_id    TEXT NOT NULL REFERENCES transfers (id),
    recipient      TEXT NOT NULL,
    token_hash     TEXT NOT NULL UNIQUE,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'active', 'failed', 'revoked')),
    max_downloads  INTEGER NOT NULL CHECK (max_downloads >= 0),  -- 0 = unlimited
    download_count INTEGER NOT NULL DEFAULT 0 CHECK (download_count >= 0),
    created_at     TEXT NOT NULL,
    activated_at   TEXT
);
CREATE INDEX links_by_transfer ON links (transfer_id);

-- Which recipients of one incoming message (by fingerprint) were already served,
-- so a retried message does not mail anyone twice.
CREATE TABLE deliveries (
    fingerprint  TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    transfer_id  TEXT,
    link_id      TEXT,
    delivered_at TEXT NOT NULL,
    PRIMARY KEY (fingerprint, recipient)
);

-- The audit trail. No foreign keys: an event may describe a transfer whose insert failed.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    transfer_id TEXT,
    link_id     TEXT,
    recipient   TEXT,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_transfer ON events (transfer_id, id);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
