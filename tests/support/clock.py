"""An injectable clock: tests move time instead of sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


class FakeClock:
    """Injectable clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 11, 26, 0, 12, 40, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> None:
        self.now += timedelta(**kwargs)
