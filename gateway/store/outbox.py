"""The durable outbox: every mail and webhook call the gateway itself originates waits here.

Items are written in the same transaction as the state they belong to (a link's activation,
a download), so a crash loses nothing; a worker sends what is due. Secrets an item needs
(a password, a one-time code, a management token) are kept sealed with the master key and
wiped in the same commit that records the next hop's acceptance, so nothing accepted is
sent twice and no secret outlives its delivery.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.addresses import is_null_sender
from gateway.store.db import Database, from_text, to_text


def new_outbox_id() -> str:
    """Ids are made by the caller first, so that sealed secrets can be bound to them."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class OutboxItem:
    id: str
    kind: str
    transfer_id: str | None
    link_id: str | None
    dedupe_key: str | None
    payload: dict[str, Any]
    sealed: bytes | None
    created_at: datetime
    due_at: datetime
    attempts: int
    last_error: str | None
    state: str  # 'pending' | 'sent' | 'gave_up' | 'cancelled'
    sent_at: datetime | None


def _item(row) -> OutboxItem:
    fields = dict(row)
    fields["payload"] = json.loads(fields["payload"])
    for name in ("created_at", "due_at", "sent_at"):
        fields[name] = from_text(fields[name])
    return OutboxItem(**fields)


class OutboxStore:
    def __init__(self, db: Database):
        self._db = db

    def enqueue(
        self, *, kind: str, now: datetime, due_at: datetime, item_id: str | None = None,
        payload: dict[str, Any] | None = None, sealed: bytes | None = None,
        transfer_id: str | None = None, link_id: str | None = None,
        dedupe_key: str | None = None,
    ) -> str | None:
        """Add one item; None when an item with the same dedupe_key already exists."""
        item_id = item_id or new_outbox_id()
        changed = self._db.write(
            "INSERT INTO outbox (id, kind, transfer_id, link_id, dedupe_key, payload, sealed,"
            " created_at, due_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
            " ON CONFLICT DO NOTHING",
            (item_id, kind, transfer_id, link_id, dedupe_key,
             json.dumps(payload or {}, ensure_ascii=False), sealed, to_text(now), to_text(due_at)),
        )
        return item_id if changed == 1 else None

    def queued(self, dedupe_key: str) -> bool:
        """Whether an item with this dedupe key was ever queued (whatever became of it)."""
        return bool(self._db.query("SELECT 1 FROM outbox WHERE dedupe_key = ?", (dedupe_key,)))

    async def synced(self) -> None:
        """What due() returned is on disk (a relay's commit waits for a shared fsync)."""
        await self._db.synced()

    def due(self, now: datetime, limit: int = 50) -> list[OutboxItem]:
        rows = self._db.query(
            "SELECT * FROM outbox WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id"
            " LIMIT ?",
            (to_text(now), limit),
        )
        return [_item(row) for row in rows]

    def next_due_at(self) -> datetime | None:
        rows = self._db.query("SELECT MIN(due_at) FROM outbox WHERE state = 'pending'")
        return from_text(rows[0][0]) if rows else None

    def get(self, item_id: str) -> OutboxItem | None:
        rows = self._db.query("SELECT * FROM outbox WHERE id = ?", (item_id,))
        return _item(rows[0]) if rows else None

    def items(self, transfer_id: str | None = None) -> list[OutboxItem]:
        if transfer_id is None:
            rows = self._db.query("SELECT * FROM outbox ORDER BY created_at, id")
        else:
            rows = self._db.query(
                "SELECT * FROM outbox WHERE transfer_id = ? ORDER BY created_at, id", (transfer_id,)
            )
        return [_item(row) for row in rows]

    def mark_sent(self, item: OutboxItem, now: datetime, detail: dict[str, Any] | None = None) -> bool:
        """Record the acceptance (and wipe the item's secrets) with its audit event, in one
        commit. False if the item was no longer pending (another worker, or cancelled)."""
        with self._db.transaction():
            changed = self._db.write(
                "UPDATE outbox SET state = 'sent', sent_at = ?, sealed = NULL, attempts = attempts + 1"
                " WHERE id = ? AND state = 'pending'",
                (to_text(now), item.id),
            )
            if changed == 1:
                self._db.append_event(
                    f"outbox.sent.{item.kind}", now, transfer_id=item.transfer_id,
                    link_id=item.link_id, detail={"item": item.id, **(detail or {})},
                )
        return changed == 1

    def mark_retry(self, item: OutboxItem, next_due: datetime, error: str) -> None:
        self._db.write(
            "UPDATE outbox SET attempts = attempts + 1, due_at = ?, last_error = ?"
            " WHERE id = ? AND state = 'pending'",
            (to_text(next_due), error[:500], item.id),
        )

    def mark_gave_up(
        self, item: OutboxItem, now: datetime, error: str, note: dict[str, Any] | None = None
    ) -> bool:
        """Give up on an item, audited; `note` (enqueue's arguments) queues the notice telling
        the sender, in the same commit, so a crash cannot lose it. A transfer from the null
        sender gets no note: nothing is ever sent to `<>`."""
        with self._db.transaction():
            changed = self._db.write(
                "UPDATE outbox SET state = 'gave_up', sealed = NULL, last_error = ?,"
                " attempts = attempts + 1 WHERE id = ? AND state = 'pending'",
                (error[:500], item.id),
            )
            if changed == 1:
                self._db.append_event(
                    f"outbox.gave_up.{item.kind}", now, transfer_id=item.transfer_id,
                    link_id=item.link_id, detail={"item": item.id, "error": error[:200]},
                )
                if note is not None and not self._from_null_sender(note.get("transfer_id")):
                    self.enqueue(now=now, **note)
        return changed == 1

    def _from_null_sender(self, transfer_id: str | None) -> bool:
        transfer = self._db.transfer(transfer_id) if transfer_id else None
        return transfer is not None and is_null_sender(transfer.sender)

    def cancel(self, *, link_id: str | None = None, transfer_id: str | None = None,
               kinds: tuple[str, ...] = ()) -> int:
        """Cancel pending items of a revoked link or transfer (their secrets go with them)."""
        if (link_id is None) == (transfer_id is None):
            raise ValueError("name either a link or a transfer")
        column, value = ("link_id", link_id) if link_id else ("transfer_id", transfer_id)
        kind_filter = f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else ""
        return self._db.write(
            f"UPDATE outbox SET state = 'cancelled', sealed = NULL WHERE {column} = ?"
            f" AND state = 'pending'{kind_filter}",
            (value, *kinds),
        )

    def forget_finished_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` items sent, given up or cancelled that were due before
        `before` (their secrets are long wiped); returns how many. An item still pending (due,
        or waiting for its next try) is never touched, nor one of a transfer still live: its
        dedupe key keeps a retry's link activation from queueing the same notice again."""
        return self._db.write(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
            " WHERE state IN ('sent', 'gave_up', 'cancelled') AND due_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM transfers WHERE transfers.id = outbox.transfer_id"
            " AND transfers.state IN ('pending', 'active')) LIMIT ?)",
            (to_text(before), limit),
        )
