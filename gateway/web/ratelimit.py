"""Count what one client does within a sliding window, in the metadata store: every worker and
every node on the database counts together, so N of them give a client the limit once.

The calls block (they ask the database): the portal makes them in worker threads. IPv6 clients
are counted per /64, the block one subscriber usually holds.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from gateway.store.throttles import ThrottleStore

_SHORTEST_WAIT = timedelta(seconds=1)


def client_key(address: str) -> str:
    """The unit a limit applies to: an IPv4 address, or an IPv6 /64 (anything else as is)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class SlidingWindow:
    """At most `limit` reservations per key within any `window`, counted under `scope` (the
    name this limit's counts have in the store)."""

    def __init__(self, store: ThrottleStore, scope: str, limit: int, window: timedelta):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._store = store
        self._scope = scope
        self._limit = limit
        self._window = window

    def reserve(self, key: str, now: datetime) -> timedelta | None:
        """Count one use now and return None; or, if the key is at its limit, count nothing
        and return how long until it may try again."""
        with self._store.exclusive(self._scope, key):
            wait = self.retry_after(key, now)
            if wait is None:
                self._store.add(self._scope, key, now + self._window)
            return wait

    def retry_after(self, key: str, now: datetime) -> timedelta | None:
        """How long until the key may be counted again (None: it may now); counts nothing."""
        count, first_ends = self._store.count(self._scope, key, now)
        if count < self._limit or first_ends is None:
            return None
        return max(first_ends - now, _SHORTEST_WAIT)

    def release(self, key: str) -> None:
        """Give back the latest reservation (the use it was for did not happen)."""
        self._store.take_back(self._scope, key)


class GuessThrottle:
    """Limit how many link tokens one client may try that lead nowhere (guessing).

    A client at its limit is refused before any lookup, real token or not: were real tokens
    still answered, the refusals would tell hits from misses. Only misses count, so a link
    opened again and again (mail scanners, in parallel) is never throttled; the price is
    that guesses already running when the limit is reached still get their answer.
    """

    SCOPE = "portal-guess"

    def __init__(self, store: ThrottleStore, limit: int, window: timedelta):
        self._misses = SlidingWindow(store, self.SCOPE, limit, window)

    def wait(self, address: str, now: datetime) -> timedelta | None:
        """How long the client at `address` must wait before its next lookup (None: it
        need not wait)."""
        return self._misses.retry_after(client_key(address), now)

    def missed(self, address: str, now: datetime) -> bool:
        """Count one lookup that found nothing; True once the client is at its limit."""
        key = client_key(address)
        self._misses.reserve(key, now)
        return self._misses.retry_after(key, now) is not None
