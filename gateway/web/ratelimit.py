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
        times = self._times.pop(key, None) or deque()
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            self._times[key] = times
            return max(times[0] + self._window - now, timedelta(seconds=1))
        times.append(now)
        self._times[key] = times
        while len(self._times) > self._max_keys:
            self._times.popitem(last=False)
        return None

    def release(self, key: str) -> None:
        """Give back the latest reservation (the use it was for did not happen)."""
        times = self._times.get(key)
        if times:
            times.pop()
