-- A mail without attachments may be the password mail for a transfer its sender sent to the same
-- recipients: found from the recipients' live links. As migrations/sqlite/0008.

CREATE INDEX links_by_recipient ON links (lower(recipient), state);
