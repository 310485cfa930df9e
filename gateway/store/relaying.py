"""The messages being relayed now on the nodes of a cluster, by fingerprint, so that a client's
retry reaching another node while the first still relays the message is deferred
(gateway/pipeline/admission.py, which asks the machine's own ledger first).

One row per message: the node relaying it and when the claim expires. A claim past its expiry
is a dead node's (or that of a relay that outlived every timeout) and is taken over; so is one
of the claiming node's own, which its in-machine ledger has just found free (a crashed worker's,
or one whose release has not run yet). Expired rows are deleted by the purge.
"""

from __future__ import annotations

from datetime import datetime

from gateway.store.db import Database, to_text


class RelayClaims:
    def __init__(self, db: Database):
        self._db = db

    def claim(self, fingerprint: str, node: str, now: datetime, expires_at: datetime) -> bool:
        """Whether `node` now holds the message's claim (False: another node relays it)."""
        return self._db.write(
            "INSERT INTO relaying (fingerprint, node, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (fingerprint) DO UPDATE SET node = excluded.node,"
            " expires_at = excluded.expires_at"
            " WHERE relaying.expires_at <= ? OR relaying.node = excluded.node",
            (fingerprint, node, to_text(expires_at), to_text(now)),
        ) == 1

    def release(self, fingerprint: str, node: str, expires_at: datetime) -> None:
        """Let go of the claim `node` took with this expiry (not one taken over since)."""
        self._db.write(
            "DELETE FROM relaying WHERE fingerprint = ? AND node = ? AND expires_at = ?",
            (fingerprint, node, to_text(expires_at)),
        )

    def holder(self, fingerprint: str, now: datetime) -> str | None:
        """The node whose claim on the message holds at `now`, if any."""
        rows = self._db.query(
            "SELECT node FROM relaying WHERE fingerprint = ? AND expires_at > ?",
            (fingerprint, to_text(now)),
        )
        return rows[0][0] if rows else None

    def forget_expired(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` claims past their expiry; returns how many."""
        return self._db.write(
            "DELETE FROM relaying WHERE fingerprint IN (SELECT fingerprint FROM relaying"
            " WHERE expires_at <= ? LIMIT ?)",
            (to_text(now), limit),
        )
