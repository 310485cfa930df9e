-- The policy a transfer was made under, as JSON. As migrations/sqlite/0005_transfer_policy.sql.

ALTER TABLE transfers ADD COLUMN policy TEXT COLLATE "C";
