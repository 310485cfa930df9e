"""The outbox worker's back-off schedule on its own (the worker against a real outbox and a real
SMTP sink: tests/e2e/test_notify_worker_smtp.py)."""

from __future__ import annotations

from datetime import timedelta

from gateway.config import NotifySettings
from gateway.notify.worker import backoff

SETTINGS = NotifySettings(
    from_address="ppap-gateway@city.example.lg.jp", retry_initial=timedelta(minutes=1),
    retry_max=timedelta(hours=1), max_age=timedelta(days=2), poll_interval=timedelta(seconds=60),
)


def test_backoff_doubles_from_retry_initial_and_stops_at_retry_max() -> None:
    waits = [backoff(SETTINGS, attempts) for attempts in range(9)]
    assert waits == [timedelta(minutes=m) for m in (1, 2, 4, 8, 16, 32, 60, 60, 60)]
    assert backoff(SETTINGS, 10**9) == timedelta(hours=1)  # no overflow, no long loop
    tiny = NotifySettings(retry_initial=timedelta(0), retry_max=timedelta(0))
    assert backoff(tiny, 0) == timedelta(seconds=1)  # never a busy loop
