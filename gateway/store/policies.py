"""The policy a transfer was made under, kept with it (transfers.policy, migration 0005), so that
whatever happens to the transfer later (its password mail, the sender's unlock form, its
notices) follows the rules it was converted under, not the configuration of the day.

The stored form is JSON, written and read field by field here: durations as seconds, choices
as their strings, flags as booleans, numbers as integers, under a version number. Adding a
field to `Policy` means adding it below (a unit test compares the two) and, when older
snapshots lack it, saying in `_read` what they meant.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, Callable

from gateway.config import (
    CONVERT_MODES,
    ENCRYPTED_MAIL,
    LOCALES,
    NOTIFY_SENDER,
    ON_SCAN_ERROR,
    PASSWORD_CHANNELS,
    PASSWORD_MAIL,
    Policy,
)
from gateway.store.rows import TransferRow

log = logging.getLogger("gateway.store")

SNAPSHOT_VERSION = 1


class PolicySnapshotError(ValueError):
    """A stored snapshot this program cannot read (damaged, or written by a newer version)."""


def _seconds(value: timedelta) -> int | float:
    seconds = value.total_seconds()
    return int(seconds) if seconds.is_integer() else seconds


def _duration(value: Any) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise PolicySnapshotError(f"not a duration in seconds: {value!r}")
    return timedelta(seconds=value)


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if value not in allowed:
            raise PolicySnapshotError(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return read


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicySnapshotError(f"not a boolean: {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicySnapshotError(f"not a count: {value!r}")
    return value


def _same(value: Any) -> Any:
    return value


# Every field of Policy: (how it is written, how it is read back and checked).
_FIELDS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "convert": (_same, _choice(CONVERT_MODES)),
    "link_lifetime": (_seconds, _duration),
    "max_link_lifetime": (_seconds, _duration),
    "max_downloads": (_same, _count),
    "password": (_same, _choice(PASSWORD_CHANNELS)),
    "password_length": (_same, _count),
    "locale": (_same, _choice(LOCALES)),
    "convert_signed": (_same, _flag),
    "encrypted_mail": (_same, _choice(ENCRYPTED_MAIL)),
    "password_delay": (_seconds, _duration),
    "verify_recipient": (_same, _flag),
    "sender_receipt": (_same, _flag),
    "notify_sender": (_same, _choice(NOTIFY_SENDER)),
    "password_mail_window": (_seconds, _duration),
    "password_mail": (_same, _choice(PASSWORD_MAIL)),
    "keep_original_zip": (_same, _flag),
    "on_scan_error": (_same, _choice(ON_SCAN_ERROR)),
}


def policy_to_json(policy: Policy) -> str:
    """The snapshot of `policy` as stored: `{"version": 1, "policy": {...}}`."""
    values = {name: write(getattr(policy, name)) for name, (write, _) in _FIELDS.items()}
    return json.dumps({"version": SNAPSHOT_VERSION, "policy": values},
                      ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def policy_from_json(text: str) -> Policy:
    """The Policy a snapshot holds; PolicySnapshotError when it cannot be read as written."""
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as error:
        raise PolicySnapshotError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("policy"), dict):
        raise PolicySnapshotError("not a policy snapshot")
    version = document.get("version")
    if version != SNAPSHOT_VERSION:
        raise PolicySnapshotError(f"snapshot version {version!r} is not {SNAPSHOT_VERSION}")
    return _read(document["policy"])


def _read(values: dict[str, Any]) -> Policy:
    unknown = sorted(set(values) - set(_FIELDS))
    missing = sorted(set(_FIELDS) - set(values))
    if unknown or missing:
        raise PolicySnapshotError(f"fields unknown {unknown}, missing {missing}")
    read: dict[str, Any] = {}
    for name, (_, check) in _FIELDS.items():
        try:
            read[name] = check(values[name])
        except PolicySnapshotError as error:
            raise PolicySnapshotError(f"{name}: {error}") from None
    return Policy(**read)



def stored_policy(transfer: TransferRow) -> Policy | None:
    """The policy `transfer` was made under; None when it has no snapshot (stored before
    migration 0005) or one this program cannot read (logged): the caller then falls back to
    the current configuration's department policy, as before snapshots existed."""
    if transfer.policy is None:
        return None
    try:
        return policy_from_json(transfer.policy)
    except PolicySnapshotError as error:
        log.error("transfer=%s: unreadable policy snapshot, using the current policy: %s",
                  transfer.id, error)
        return None
