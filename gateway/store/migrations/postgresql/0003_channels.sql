-- The durable outbox, per-transfer controls and one-time codes. As
-- migrations/sqlite/0003_channels.sql.

CREATE TABLE outbox (
    id          TEXT COLLATE "C" PRIMARY KEY,
    kind        TEXT COLLATE "C" NOT NULL,
    transfer_id TEXT COLLATE "C",
    link_id     TEXT COLLATE "C",
    dedupe_key  TEXT COLLATE "C" UNIQUE,
    payload     TEXT COLLATE "C" NOT NULL DEFAULT '{}',  -- JSON, never a secret in clear
    sealed      BYTEA,               -- this item's secrets, sealed with the master key; wiped once sent
    created_at  TEXT COLLATE "C" NOT NULL,
    due_at      TEXT COLLATE "C" NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT COLLATE "C",
    state       TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'sent', 'gave_up', 'cancelled')),
    sent_at     TEXT COLLATE "C"
);
CREATE INDEX outbox_due ON outbox (state, due_at);
CREATE INDEX outbox_by_transfer ON outbox (transfer_id);

CREATE TABLE transfer_controls (
    transfer_id       TEXT COLLATE "C" PRIMARY KEY,
    manage_token_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    verify_recipient  BIGINT NOT NULL DEFAULT 0,
    notify_sender     TEXT COLLATE "C" NOT NULL DEFAULT 'first-download'
                      CHECK (notify_sender IN ('never', 'first-download', 'every-download')),
    max_expires_at    TEXT COLLATE "C" NOT NULL
);

CREATE TABLE link_otp (
    link_id     TEXT COLLATE "C" PRIMARY KEY,
    code_hash   TEXT COLLATE "C" NOT NULL,
    expires_at  TEXT COLLATE "C" NOT NULL,
    failures    BIGINT NOT NULL DEFAULT 0 CHECK (failures >= 0),
    sent_at     TEXT COLLATE "C" NOT NULL,
    sends       BIGINT NOT NULL DEFAULT 1 CHECK (sends >= 0),
    verified_at TEXT COLLATE "C"
);
