"""Named crash points for durability tests: at an armed point the process dies by SIGKILL.

Each point sits at a commit boundary, so a test can cut the power exactly there and prove that
a restart loses nothing. Only `ppap-gateway serve` arms a point (from PPAP_GATEWAY_CRASH_AT,
read once at start); disarmed, a point costs one attribute check.
"""

from __future__ import annotations

import os
import signal

# Where each point sits, in the order a converted message passes them.
POINTS: dict[str, str] = {
    "store.blobs_written": "blobs fsync'd, transfer metadata not yet committed",
    "store.committed": "transfer metadata committed, nothing delivered yet",
    "deliver.accepted": "next hop answered 250 to DATA, delivery not yet recorded",
    "relay.recorded": "every delivery recorded, our 250 not yet sent to the client",
    "notify.sent": "outbox item accepted by the next hop, not yet marked sent",
    "purge.blobs_deleted": "a purged transfer's blobs deleted, its rows not yet",
}


class _Armed:
    """Holds the one armed point; a class attribute so the check is a plain attribute load."""

    name: str | None = None
    whole_service: int | None = None  # the supervisor, killed first: a power cut takes all


def arm(name: str | None, whole_service: int | None = None) -> None:
    """Arm `name` (None or "" disarms); ValueError for a name that is not a point.
    `whole_service`: the pid of `serve`'s supervisor; a worker dying at the point takes it (and
    with it, by PR_SET_PDEATHSIG, every other worker) along, as a power cut would."""
    if name and name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(POINTS)}")
    _Armed.name = name or None
    _Armed.whole_service = whole_service


def armed() -> str | None:
    return _Armed.name


def crash_point(name: str) -> None:
    """Die here, without clean-up, flush or atexit, if `name` is the armed point."""
    if _Armed.name == name:
        if _Armed.whole_service not in (None, os.getpid()):
            os.kill(_Armed.whole_service, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
