"""The rows the metadata store hands out, and the fixed-width UTC text its timestamps are kept as.

Shared by gateway.store.db and the other repositories of this package (controls, outbox,
unlocks), so that every table stores instants the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# A row as an engine returns it (sqlite3.Row, store.engines.Row): read by position or by
# column name, and dict(row) works.
DbRow = Any


@dataclass(frozen=True)
class TransferRow:
    id: str
    fingerprint: str
    message_id: str
    sender: str
    department: str
    subject: str
    created_at: datetime
    expires_at: datetime
    state: str  # 'pending' | 'active' | 'failed' | 'purged'
    password_channel: str
    password_hash: str | None
    password_sealed: bytes | None
    locale: str
    # The policy it was made under, as JSON (gateway/store/policies.py: stored_policy reads
    # it); None when stored before migration 0005.
    policy: str | None = None


@dataclass(frozen=True)
class FileRow:
    id: str
    transfer_id: str
    display_name: str
    content_type: str
    size: int
    sha256: str
    blob_id: str
    wrapped_key: bytes
    position: int


@dataclass(frozen=True)
class LinkRow:
    id: str
    transfer_id: str
    recipient: str
    token_hash: str
    state: str  # 'pending' | 'active' | 'failed' | 'revoked' | 'expired' (files purged)
    max_downloads: int  # 0 = unlimited
    download_count: int
    created_at: datetime
    activated_at: datetime | None


@dataclass(frozen=True)
class EventRow:
    id: int
    at: datetime
    kind: str
    transfer_id: str | None
    link_id: str | None
    recipient: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class PasswordGuardRow:
    """Download-password attempts counted against one link, and its lock-out if any."""

    link_id: str
    failures: int
    locked_until: datetime | None


def to_text(moment: datetime) -> str:
    """Fixed-width UTC text, so that SQL text comparison orders instants correctly."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp must be timezone-aware: {moment!r}")
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=timezone.utc)


def from_text(text: str | None) -> datetime | None:
    return None if text is None else _instant(text)


def transfer_row(row: DbRow) -> TransferRow:
    fields = dict(row)
    fields["created_at"] = _instant(fields["created_at"])
    fields["expires_at"] = _instant(fields["expires_at"])
    return TransferRow(**fields)


def link_row(row: DbRow) -> LinkRow:
    fields = dict(row)
    fields["created_at"] = _instant(fields["created_at"])
    fields["activated_at"] = from_text(fields["activated_at"])
    return LinkRow(**fields)


def event_row(row: DbRow) -> EventRow:
    fields = dict(row)
    fields["at"] = _instant(fields["at"])
    fields["detail"] = json.loads(fields["detail"])
    return EventRow(**fields)
