"""What the sender controls about a transfer: its management token (stored hashed), whether
recipients must prove their mailbox, when the sender hears of downloads; and revoke/extend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Database, from_text, to_text


@dataclass(frozen=True)
class TransferControls:
    transfer_id: str
    manage_token_hash: str
    verify_recipient: bool
    notify_sender: str  # 'never' | 'first-download' | 'every-download'
    max_expires_at: datetime


def _controls(row) -> TransferControls:
    return TransferControls(
        transfer_id=row["transfer_id"], manage_token_hash=row["manage_token_hash"],
        verify_recipient=bool(row["verify_recipient"]), notify_sender=row["notify_sender"],
        max_expires_at=from_text(row["max_expires_at"]),
    )


class ExtensionRefused(ValueError):
    """The new expiry is past the policy's maximum, or not later than the current one."""


class ControlsStore:
    def __init__(self, db: Database):
        self._db = db

    def insert(
        self, *, transfer_id: str, manage_token_hash: str, verify_recipient: bool,
        notify_sender: str, max_expires_at: datetime,
    ) -> None:
        self._db.write(
            "INSERT INTO transfer_controls (transfer_id, manage_token_hash, verify_recipient,"
            " notify_sender, max_expires_at) VALUES (?, ?, ?, ?, ?)",
            (transfer_id, manage_token_hash, int(verify_recipient), notify_sender,
             to_text(max_expires_at)),
        )

    def of(self, transfer_id: str) -> TransferControls | None:
        rows = self._db.query(
            "SELECT * FROM transfer_controls WHERE transfer_id = ?", (transfer_id,)
        )
        return _controls(rows[0]) if rows else None

    def by_manage_token_hash(self, token_hash: str) -> TransferControls | None:
        rows = self._db.query(
            "SELECT * FROM transfer_controls WHERE manage_token_hash = ?", (token_hash,)
        )
        return _controls(rows[0]) if rows else None

    def revoke_links(self, transfer_id: str, link_id: str | None, now: datetime, by: str) -> int:
        """Revoke one active link of the transfer, or all of them; audited in the same commit."""
        with self._db.transaction():
            if link_id is None:
                changed = self._db.write(
                    "UPDATE links SET state = 'revoked' WHERE transfer_id = ? AND state = 'active'",
                    (transfer_id,),
                )
            else:
                changed = self._db.write(
                    "UPDATE links SET state = 'revoked' WHERE id = ? AND transfer_id = ?"
                    " AND state = 'active'",
                    (link_id, transfer_id),
                )
            self._db.append_event(
                "link.revoked", now, transfer_id=transfer_id, link_id=link_id,
                detail={"by": by, "links": changed, "scope": "one" if link_id else "all"},
            )
        return changed

    def extend(self, transfer_id: str, new_expires_at: datetime, now: datetime, by: str) -> None:
        controls = self.of(transfer_id)
        transfer = self._db.transfer(transfer_id)
        if controls is None or transfer is None:
            raise ExtensionRefused("no such transfer")
        if new_expires_at > controls.max_expires_at:
            raise ExtensionRefused("past the longest lifetime the policy allows")
        if new_expires_at <= transfer.expires_at or new_expires_at <= now:
            raise ExtensionRefused("not later than the current expiry")
        with self._db.transaction():
            self._db.write(
                "UPDATE transfers SET expires_at = ? WHERE id = ? AND state = 'active'",
                (to_text(new_expires_at), transfer_id),
            )
            self._db.append_event(
                "transfer.extended", now, transfer_id=transfer_id,
                detail={"by": by, "from": to_text(transfer.expires_at),
                        "to": to_text(new_expires_at)},
            )
