-- A mail without attachments may be the password mail for a transfer its sender sent to the same
-- recipients (gateway/store/unlocks.py, waiting_for_password): found from the recipients' live
-- links, so the cost does not grow with the sender's other transfers (issue 14 point 2).
CREATE INDEX links_by_recipient ON links (lower(recipient), state);
