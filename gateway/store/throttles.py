"""Counters of recent uses, kept in the metadata store so that every process and every node on
the database counts together: the sliding windows of the throttles (gateway/web/ratelimit.py,
gateway/smtp/access.py).

Uses are rows (scope, key, until, hits): a throttle's scope, what it counts for (a client
network, an account name, a transfer), when they stop counting (the moment they were made plus
the throttle's window, rounded up to the second) and how many there are. Uses that end in the
same second share a row, so counting a key sums at most one row per second of its window,
however many tries it has (a limit set high costs no more per check), and a use counts up to a
second longer than its window: stricter, never looser. A decision that counts and then adds
runs in `exclusive(scope, key)`: a transaction that no other one about the same key, in any
process on any node, can interleave with, so parallel tries never get past a limit together.

On SQLite these commits are not synced one by one (they ride on the next sync anyone makes): a
use lost in a power cut only lets a client try once more, and a guesser cannot make the gateway
fsync at the rate of its requests. Uses past their end are deleted by the purge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from gateway.store.db import Database, from_text, to_text
from gateway.store.durability import deferring_commits


def _whole_second(instant: datetime) -> datetime:
    """`instant`, or the next whole second if it falls between two."""
    if not instant.microsecond:
        return instant
    return instant.replace(microsecond=0) + timedelta(seconds=1)


class ThrottleStore:
    def __init__(self, db: Database):
        self._db = db

    @contextmanager
    def exclusive(self, scope: str, key: str) -> Iterator[None]:
        """A transaction in which the counts of (scope, key) change only by what it does."""
        with deferring_commits(), self._db.transaction():
            self._db.lock_key(f"throttle {scope} {key}")
            yield

    def count(self, scope: str, key: str, now: datetime) -> tuple[int, datetime | None]:
        """How many uses count at `now`, and when the first of them stops (None: none)."""
        rows = self._db.query(
            "SELECT COALESCE(SUM(hits), 0), MIN(until) FROM throttle_hits"
            " WHERE scope = ? AND key = ? AND until > ?",
            (scope, key, to_text(now)),
        )
        return int(rows[0][0]), from_text(rows[0][1])

    def add(self, scope: str, key: str, until: datetime) -> None:
        """One more use, counting until `until` (to the second)."""
        with deferring_commits():
            self._db.write(
                "INSERT INTO throttle_hits (scope, key, until, hits) VALUES (?, ?, ?, 1)"
                " ON CONFLICT (scope, key, until) DO UPDATE SET hits = throttle_hits.hits + 1",
                (scope, key, to_text(_whole_second(until))),
            )

    def take_back(self, scope: str, key: str) -> None:
        """Remove the use that counts longest (the latest one added): it did not happen."""
        with self.exclusive(scope, key):
            rows = self._db.query(
                "SELECT until FROM throttle_hits WHERE scope = ? AND key = ?"
                " ORDER BY until DESC LIMIT 1",
                (scope, key),
            )
            if not rows:
                return
            latest = (scope, key, rows[0][0])
            self._db.write("DELETE FROM throttle_hits WHERE scope = ? AND key = ? AND until = ?"
                           " AND hits = 1", latest)
            self._db.write("UPDATE throttle_hits SET hits = hits - 1 WHERE scope = ? AND key = ?"
                           " AND until = ? AND hits > 1", latest)

    def clear(self, scope: str, key: str) -> None:
        with deferring_commits():
            self._db.write("DELETE FROM throttle_hits WHERE scope = ? AND key = ?", (scope, key))

    def forget_expired(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` rows of uses that no longer count; returns how many."""
        return self._db.write(
            "DELETE FROM throttle_hits WHERE (scope, key, until) IN (SELECT scope, key, until"
            " FROM throttle_hits WHERE until <= ? LIMIT ?)",
            (to_text(now), limit),
        )
