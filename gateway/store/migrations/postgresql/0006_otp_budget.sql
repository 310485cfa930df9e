-- A link's budget of one-time codes. As migrations/sqlite/0006_otp_budget.sql.

ALTER TABLE link_otp ADD COLUMN total_failures BIGINT NOT NULL DEFAULT 0
    CHECK (total_failures >= 0);
ALTER TABLE link_otp ADD COLUMN locked_at TEXT COLLATE "C";
ALTER TABLE link_otp ADD COLUMN locked_reason TEXT COLLATE "C";
