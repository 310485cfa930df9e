-- The separate channel and sender control: a durable outbox for everything the gateway itself
-- sends (mails and webhook calls), per-transfer controls (management token, recipient
-- verification, sender notifications) and one-time codes. Tables of their own, so the row
-- types of transfers and links stay as they are.

CREATE TABLE outbox (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,        -- e.g. 'password-recipient', 'receipt', 'otp', 'webhook-password'
    transfer_id TEXT,
    link_id     TEXT,
    dedupe_key  TEXT UNIQUE,          -- one receipt per transfer, one password notice per link, ...
    payload     TEXT NOT NULL DEFAULT '{}',  -- JSON, never a secret in clear
    sealed      BLOB,                 -- this item's secrets, sealed with the master key; wiped once sent
    created_at  TEXT NOT NULL,
    due_at      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'gave_up', 'cancelled')),
    sent_at     TEXT
);
CREATE INDEX outbox_due ON outbox (state, due_at);
CREATE INDEX outbox_by_transfer ON outbox (transfer_id);

CREATE TABLE transfer_controls (
    transfer_id       TEXT PRIMARY KEY,
    manage_token_hash TEXT NOT NULL UNIQUE,
    verify_recipient  INTEGER NOT NULL DEFAULT 0,
    notify_sender     TEXT NOT NULL DEFAULT 'first-download'
                      CHECK (notify_sender IN ('never', 'first-download', 'every-download')),
    max_expires_at    TEXT NOT NULL       -- created_at + the policy's max_link_lifetime
);

CREATE TABLE link_otp (
    link_id     TEXT PRIMARY KEY,
    code_hash   TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    failures    INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    sent_at     TEXT NOT NULL,
    sends       INTEGER NOT NULL DEFAULT 1 CHECK (sends >= 0),
    verified_at TEXT
);
