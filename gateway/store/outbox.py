"""The durable outbox: every mail and webhook call the gateway itself originates waits here.

Items are written in the same transaction as the state they belong to (a link's activation,
a download), so a crash loses nothing; a worker sends what is due. Secrets an item needs
(a password, a one-time code, a management token) are kept sealed with the master key and
wiped in the same commit that records the next hop's acceptance, so nothing accepted is
sent twice and no secret outlives its delivery.

Several workers (one per node of a cluster) share the outbox through claims: claim_due hands an
item to one of them until a lease runs out, and only the claim an item was read with may record
its outcome (mark_sent, mark_retry, mark_gave_up). A claimer that died leaves its item to be
claimed again once the lease has passed. A slow one's late outcome still counts if nobody has
claimed the item since, and is refused if another has: the item was then sent twice at worst
(the at-least-once of the notice worker), and its outcome is recorded once, the new claimer's.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    # The claim it was read with (claim_due): the node, and when its lease runs out.
    claimed_by: str | None = None
    claimed_until: datetime | None = None


def _item(row) -> OutboxItem:
    fields = dict(row)
    fields["payload"] = json.loads(fields["payload"])
    for name in ("created_at", "due_at", "sent_at", "claimed_until"):
        fields[name] = from_text(fields[name])
    return OutboxItem(**fields)


def _same_claim(item: OutboxItem) -> tuple[str, tuple[Any, ...]]:
    """The condition that the item is still under the claim it was read with (or still under
    none): nobody has claimed it since."""
    if item.claimed_by is None or item.claimed_until is None:
        return "claimed_by IS NULL", ()
    return "claimed_by = ? AND claimed_until = ?", (item.claimed_by, to_text(item.claimed_until))


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

    def due(self, now: datetime, limit: int = 50) -> list[OutboxItem]:
        """Pending items due by `now`, whoever holds them (a read: claim_due takes them)."""
        rows = self._db.query(
            "SELECT * FROM outbox WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id"
            " LIMIT ?",
            (to_text(now), limit),
        )
        return [_item(row) for row in rows]

    def claim_due(self, node: str, now: datetime, lease: timedelta,
                  limit: int = 1) -> list[OutboxItem]:
        """Claim up to `limit` pending items due by `now` for `node` until `now + lease`, the
        earliest due first, in one commit; each as claimed. An item is free to claim when no
        one holds it, when its lease has run out (its claimer died, or is very late), or when
        `node` itself holds it: one worker sends per node, so a claim of its node that it does
        not know of is a predecessor's (a restart after a crash). Items other nodes hold are
        passed over, not waited for."""
        cutoff = to_text(now)
        rows = self._db.write_returning(
            "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id"
            " FROM outbox WHERE state = 'pending' AND due_at <= ? AND (claimed_until IS NULL"
            " OR claimed_until <= ? OR claimed_by = ?) ORDER BY due_at, id"
            f" LIMIT ?{self._db.dialect.skip_locked}) RETURNING *",
            (node, to_text(now + lease), cutoff, cutoff, node, limit),
        )
        return sorted((_item(row) for row in rows), key=lambda item: (item.due_at, item.id))

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
        commit. False if the item was no longer pending (another worker, or cancelled) or no
        longer under the claim it was read with (another worker claimed it since)."""
        claim, held = _same_claim(item)
        with self._db.transaction():
            changed = self._db.write(
                "UPDATE outbox SET state = 'sent', sent_at = ?, sealed = NULL, attempts = attempts + 1"
                f" WHERE id = ? AND state = 'pending' AND {claim}",
                (to_text(now), item.id, *held),
            )
            if changed == 1:
                self._db.append_event(
                    f"outbox.sent.{item.kind}", now, transfer_id=item.transfer_id,
                    link_id=item.link_id, detail={"item": item.id, **(detail or {})},
                )
        return changed == 1

    def mark_retry(self, item: OutboxItem, next_due: datetime, error: str) -> bool:
        """Count a failed attempt and let the item go (claim released) until `next_due`. False,
        changing nothing, if it was settled or claimed by another worker meanwhile."""
        claim, held = _same_claim(item)
        changed = self._db.write(
            "UPDATE outbox SET attempts = attempts + 1, due_at = ?, last_error = ?,"
            " claimed_by = NULL, claimed_until = NULL"
            f" WHERE id = ? AND state = 'pending' AND {claim}",
            (to_text(next_due), error[:500], item.id, *held),
        )
        return changed == 1

    def mark_gave_up(
        self, item: OutboxItem, now: datetime, error: str, note: dict[str, Any] | None = None
    ) -> bool:
        """Give up on an item, audited; `note` (enqueue's arguments) queues the notice telling
        the sender, in the same commit, so a crash cannot lose it. A transfer from the null
        sender gets no note: nothing is ever sent to `<>`. False, changing nothing, as
        mark_sent."""
        claim, held = _same_claim(item)
        with self._db.transaction():
            changed = self._db.write(
                "UPDATE outbox SET state = 'gave_up', sealed = NULL, last_error = ?,"
                f" attempts = attempts + 1 WHERE id = ? AND state = 'pending' AND {claim}",
                (error[:500], item.id, *held),
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
