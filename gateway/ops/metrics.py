"""Count what the gateway does, in Prometheus form, on a registry of its own.

Every label value comes from a fixed set (anything else is counted as "other"), so no input a
sender or a downloader controls can create new time series. All series exist from the start,
at zero, so dashboards and alerts see them before the first event.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from prometheus_client import values
from prometheus_client.multiprocess import MultiProcessCollector

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

OTHER = "other"
DECISIONS: tuple[str, ...] = (
    "pass", "convert", "internal", "signed", "duplicate", "password-mail", "error", OTHER,
)
REFUSAL_REASONS: tuple[str, ...] = (
    "not_found", "expired", "exhausted", "revoked", "not_active", "bad_password",
    "rate_limited", "missing_blob", "integrity", OTHER,
)
REPLY_CLASSES: tuple[str, ...] = ("2xx", "4xx", "5xx", OTHER)
# Relay latency: a pass-through takes milliseconds, a big conversion to a slow next hop
# tens of seconds.
RELAY_SECONDS_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)


def reply_class(code: int) -> str:
    """"2xx", "4xx" or "5xx" for an SMTP reply code; "other" for anything else."""
    return _bounded(f"{code // 100}xx" if 200 <= code < 600 else OTHER, REPLY_CLASSES)


def _bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else OTHER


class GatewayMetrics:
    """The gateway's counters and histogram; safe to call from any thread."""

    def __init__(
        self, refusal_reasons: Iterable[str] = REFUSAL_REASONS, shared_dir: Path | None = None
    ) -> None:
        """`shared_dir`: the directory where every worker of `serve` keeps its counts
        (count_across_processes); /metrics then shows their sums."""
        self._shared_dir = shared_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self._refusal_reasons = tuple(dict.fromkeys((*refusal_reasons, OTHER)))
        self._messages = Counter(
            "ppap_messages", "Messages relayed, by what the gateway decided.",
            ["decision"], registry=self.registry,
        )
        self._bytes_stored = Counter(
            "ppap_bytes_stored", "Plaintext bytes of attachments stored for download.",
            registry=self.registry,
        )
        self._links_created = Counter(
            "ppap_links_created", "Download links issued (one per external recipient).",
            registry=self.registry,
        )
        self._downloads = Counter(
            "ppap_downloads", "Downloads served by the portal.", registry=self.registry,
        )
        self._refusals = Counter(
            "ppap_download_refusals", "Download requests refused, by reason.",
            ["reason"], registry=self.registry,
        )
        self._replies = Counter(
            "ppap_smtp_replies", "Final replies to DATA, by class.",
            ["class"], registry=self.registry,
        )
        self._relay_seconds = Histogram(
            "ppap_relay_seconds", "Time from end of DATA to our reply, per message.",
            buckets=RELAY_SECONDS_BUCKETS, registry=self.registry,
        )
        for decision in DECISIONS:
            self._messages.labels(decision=decision)
        for reason in self._refusal_reasons:
            self._refusals.labels(reason=reason)
        for klass in REPLY_CLASSES:
            self._replies.labels(**{"class": klass})

    def message_relayed(
        self, decision: str, reply_code: int, seconds: float, bytes_stored: int = 0,
        links_created: int = 0,
    ) -> None:
        """One message answered: what was decided, the reply code, and what it stored."""
        self._messages.labels(decision=_bounded(decision, DECISIONS)).inc()
        self._replies.labels(**{"class": reply_class(reply_code)}).inc()
        self._relay_seconds.observe(max(0.0, seconds))
        # Counters only go up; a negative number is a caller's bug, not a reason to crash.
        self._bytes_stored.inc(max(0, bytes_stored))
        self._links_created.inc(max(0, links_created))

    def download(self) -> None:
        self._downloads.inc()

    def refusal(self, reason: str) -> None:
        self._refusals.labels(reason=_bounded(reason, self._refusal_reasons)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its Content-Type, for a /metrics response."""
        if self._shared_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, path=str(self._shared_dir))
        return generate_latest(every_worker), CONTENT_TYPE_LATEST


def count_across_processes(directory: Path) -> None:
    """From now on, in this process and the ones it forks, every count is kept in `directory`
    (prometheus_client's multiprocess mode, one memory-mapped file per process), so that any
    worker's /metrics can sum all of them; counts of a worker that died stay in the sums.
    Call before the first metric is made."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # read by the library when it writes
    values.ValueClass = values.MultiProcessValue()
