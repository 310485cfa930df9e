-- Retention, as migrations/sqlite/0007_retention.sql: links may be 'expired' (PostgreSQL changes
-- the CHECK in place, where SQLite rebuilds the table); the audit trail may lose what is older
-- than the horizon in audit_horizon (one row, moved only forward); indexes for the cut-offs.

ALTER TABLE links DROP CONSTRAINT links_state_check;
ALTER TABLE links ADD CONSTRAINT links_state_check
    CHECK (state IN ('pending', 'active', 'failed', 'revoked', 'expired'));

-- Links of transfers purged before this migration.
UPDATE links SET state = 'expired' WHERE state = 'active'
    AND transfer_id IN (SELECT id FROM transfers WHERE state IN ('purged', 'failed'));

CREATE TABLE audit_horizon (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    forget_before TEXT COLLATE "C" NOT NULL  -- events with `at` before this may be deleted; '' = none
);
INSERT INTO audit_horizon (id, forget_before) VALUES (1, '');

CREATE TRIGGER audit_horizon_only_forward BEFORE UPDATE ON audit_horizon
    FOR EACH ROW WHEN (new.forget_before < old.forget_before OR new.id <> old.id)
    EXECUTE FUNCTION refuse_change('the audit horizon only moves forward');
CREATE TRIGGER audit_horizon_no_delete BEFORE DELETE ON audit_horizon
    FOR EACH ROW EXECUTE FUNCTION refuse_change('the audit horizon only moves forward');
CREATE TRIGGER audit_horizon_no_truncate BEFORE TRUNCATE ON audit_horizon
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('the audit horizon only moves forward');

-- A trigger's WHEN may not hold a subquery here: the horizon is read in the function.
CREATE FUNCTION refuse_recent_event_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF old.at >= (SELECT forget_before FROM audit_horizon WHERE id = 1) THEN
        RAISE EXCEPTION 'events are append-only until the audit retention has passed'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN old;
END
$$;

DROP TRIGGER events_no_delete ON events;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_recent_event_delete();

CREATE INDEX events_by_time ON events (at);
CREATE INDEX deliveries_by_time ON deliveries (delivered_at);
CREATE INDEX transfers_ended ON transfers (state, expires_at);
