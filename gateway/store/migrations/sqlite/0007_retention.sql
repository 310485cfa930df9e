-- Retention (gateway/ops/housekeeping.py): what the purge may forget, and when.
--
-- 1. Links get the state 'expired': their transfer ended and its files were purged. Until now a
--    purged transfer's links stayed 'active'. SQLite cannot change a CHECK in place, so the table
--    is rebuilt (no other table refers to links by a foreign key).
-- 2. The audit trail stays append-only, except for what the retention purge forgets: events
--    older than the horizon it records in audit_horizon (one row, moved only forward), so an
--    update, a delete of a recent event or a horizon moved back is still refused by the file.
-- 3. Indexes for the retention's cut-offs, so a purge does not scan whole tables.

CREATE TABLE links_new (
    id             TEXT PRIMARY KEY,
    transfer_id    TEXT NOT NULL REFERENCES transfers (id),
    recipient      TEXT NOT NULL,
    token_hash     TEXT NOT NULL UNIQUE,
    state          TEXT NOT NULL
                   CHECK (state IN ('pending', 'active', 'failed', 'revoked', 'expired')),
    max_downloads  INTEGER NOT NULL CHECK (max_downloads >= 0),  -- 0 = unlimited
    download_count INTEGER NOT NULL DEFAULT 0 CHECK (download_count >= 0),
    created_at     TEXT NOT NULL,
    activated_at   TEXT
);
INSERT INTO links_new (id, transfer_id, recipient, token_hash, state, max_downloads,
                       download_count, created_at, activated_at)
    SELECT id, transfer_id, recipient, token_hash, state, max_downloads, download_count,
           created_at, activated_at FROM links;
DROP TABLE links;
ALTER TABLE links_new RENAME TO links;
CREATE INDEX links_by_transfer ON links (transfer_id);

-- Links of transfers purged before this migration.
UPDATE links SET state = 'expired' WHERE state = 'active'
    AND transfer_id IN (SELECT id FROM transfers WHERE state IN ('purged', 'failed'));

CREATE TABLE audit_horizon (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    forget_before TEXT NOT NULL      -- events with `at` before this may be deleted; '' = none
);
INSERT INTO audit_horizon (id, forget_before) VALUES (1, '');

CREATE TRIGGER audit_horizon_only_forward BEFORE UPDATE ON audit_horizon
WHEN new.forget_before < old.forget_before OR new.id != old.id
BEGIN
    SELECT RAISE(ABORT, 'the audit horizon only moves forward');
END;

CREATE TRIGGER audit_horizon_no_delete BEFORE DELETE ON audit_horizon
BEGIN
    SELECT RAISE(ABORT, 'the audit horizon only moves forward');
END;

DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN old.at >= (SELECT forget_before FROM audit_horizon WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only until the audit retention has passed');
END;

CREATE INDEX events_by_time ON events (at);
CREATE INDEX deliveries_by_time ON deliveries (delivered_at);
CREATE INDEX transfers_ended ON transfers (state, expires_at);
