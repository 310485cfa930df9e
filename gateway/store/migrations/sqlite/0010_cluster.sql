-- What several gateways on one database share (issue 15 point 3; on SQLite the processes of one
-- machine): outbox claims, the messages being relayed, and the counters of the throttles.
-- Instants are the fixed-width UTC text of 0001, so comparing the text compares the instants.

-- A worker sends an item only while it holds the item's claim (store/outbox.py, claim_due):
-- who (a node id) and until when. Both NULL: nobody holds it.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until TEXT;

-- A message (by fingerprint) that a node is relaying now: its client's retry that reaches
-- another node is deferred. A claim past expires_at is a dead node's, and is taken over.
CREATE TABLE relaying (
    fingerprint TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);

-- The uses a throttle counts (store/throttles.py): a throttle's `scope`, the `key` it counts for
-- (a client network, an account name, a transfer), when the uses stop counting (to the second)
-- and how many ended there: a key's count sums at most a row per second of its window.
CREATE TABLE throttle_hits (
    scope  TEXT NOT NULL,
    key    TEXT NOT NULL,
    until  TEXT NOT NULL,
    hits   INTEGER NOT NULL CHECK (hits > 0),
    PRIMARY KEY (scope, key, until)
);
CREATE INDEX throttle_hits_by_end ON throttle_hits (until);
