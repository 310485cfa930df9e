-- Outbox claims, the messages being relayed and the throttles' counters: what the nodes of a
-- cluster share. The schema of migrations/sqlite/0010_cluster.sql, with the types of this
-- engine's 0001 (INTEGER is BIGINT, text COLLATE "C").

ALTER TABLE outbox ADD COLUMN claimed_by TEXT COLLATE "C";
ALTER TABLE outbox ADD COLUMN claimed_until TEXT COLLATE "C";

CREATE TABLE relaying (
    fingerprint TEXT COLLATE "C" PRIMARY KEY,
    node        TEXT COLLATE "C" NOT NULL,
    expires_at  TEXT COLLATE "C" NOT NULL
);

CREATE TABLE throttle_hits (
    scope  TEXT COLLATE "C" NOT NULL,
    key    TEXT COLLATE "C" NOT NULL,
    until  TEXT COLLATE "C" NOT NULL,
    hits   BIGINT NOT NULL CHECK (hits > 0),
    PRIMARY KEY (scope, key, until)
);
CREATE INDEX throttle_hits_by_end ON throttle_hits (until);
