-- The policy a transfer was made under, as JSON (gateway/store/policies.py, versioned), written
-- in the same commit as the transfer row. Its password mail, the sender's unlock form and its
-- notices follow this snapshot, not the configuration of the day. Transfers stored before this
-- migration have NULL here: for them the current configuration's department policy still
-- applies (gateway/unlock/opening.py, TransferOpener.policy_of).

ALTER TABLE transfers ADD COLUMN policy TEXT;
