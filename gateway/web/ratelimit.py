"""Count what one client does within a sliding window, in memory, with a bounded footprint.

Kept per process: a restart forgets the counts, which only ever lets a client do a little
more, never less. IPv6 clients are counted per /64, the block one subscriber usually holds.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from datetime import datetime, timedelta


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
    """At most `limit` reservations per key within any `window`. When more than `max_keys`
    keys are tracked, the least recently used goes first."""

    def __init__(self, limit: int, window: timedelta, max_keys: int = 100_000):
        if limit < 1 or max_keys < 1:
            raise ValueError("limit and max_keys must be at least 1")
        self._limit = limit
        self._window = window
        self._max_keys = max_keys
        self._times: OrderedDict[str, deque[datetime]] = OrderedDict()

    def reserve(self, key: str, now: datetime) -> timedelta | None:
        """Count one use now and return None; or, if the key is at its limit, count nothing
        and return how long until it may try again."""
        times = self._current(key, now)
        if len(times) >= self._limit:
            return max(times[0] + self._window - now, timedelta(seconds=1))
        times.append(now)
        while len(self._times) > self._max_keys:
            self._times.popitem(last=False)
        return None

    def retry_after(self, key: str, now: datetime) -> timedelta | None:
        """How long until the key may be counted again (None: it may now); counts nothing."""
        times = self._times.get(key)
        if times is None:
            return None
        self._forget_old(times, now)
        if len(times) < self._limit:
            return None
        return max(times[0] + self._window - now, timedelta(seconds=1))

    def _current(self, key: str, now: datetime) -> deque[datetime]:
        """The key's times within the window, the key moved to most recently used."""
        times = self._times.pop(key, None) or deque()
        self._forget_old(times, now)
        self._times[key] = times
        return times

    def _forget_old(self, times: deque[datetime], now: datetime) -> None:
        while times and times[0] <= now - self._window:
            times.popleft()

    def release(self, key: str) -> None:
        """Give back the latest reservation (the use it was for did not happen)."""
        times = self._times.get(key)
        if times:
            times.pop()


class GuessThrottle:
    """Limit how many link tokens one client may try that lead nowhere (guessing).

    A client at its limit is refused before any lookup, real token or not: were real tokens
    still answered, the refusals would tell hits from misses. Only misses count, so a link
    opened again and again (mail scanners, in parallel) is never throttled; the price is
    that guesses already running when the limit is reached still get their answer.
    """

    def __init__(self, limit: int, window: timedelta, max_keys: int = 20_000):
        # Fewer keys than SlidingWindow's default: each may hold `limit` timestamps.
        self._misses = SlidingWindow(limit, window, max_keys)

    def wait(self, address: str, now: datetime) -> timedelta | None:
        """How long the client at `address` must wait before its next lookup (None: it
        need not wait)."""
        return self._misses.retry_after(client_key(address), now)

    def missed(self, address: str, now: datetime) -> bool:
        """Count one lookup that found nothing; True once the client is at its limit."""
        key = client_key(address)
        self._misses.reserve(key, now)
        return self._misses.retry_after(key, now) is not None
