-- A link's budget of one-time codes (issue 13 point 7). `sends` already counts the codes sent;
-- `total_failures` counts wrong codes over every code of the link (the per-code `failures`
-- starts again with each code). When either budget is spent the link is locked for codes
-- (`locked_at`, and `locked_reason`: 'sends' or 'failures') until the sender unlocks it from
-- the management page; a verified code starts both counts again.

ALTER TABLE link_otp ADD COLUMN total_failures INTEGER NOT NULL DEFAULT 0
    CHECK (total_failures >= 0);
ALTER TABLE link_otp ADD COLUMN locked_at TEXT;
ALTER TABLE link_otp ADD COLUMN locked_reason TEXT;
