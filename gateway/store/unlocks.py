"""What became of a transfer's encrypted ZIP once its password was known: unlocked (the files
extracted from it, stored encrypted like any attachment), blocked (a virus), or refused (a
ZIP bomb, say). Also finds the transfers a password mail may belong to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Database, FileRow, TransferRow, from_text, to_text, transfer_row


@dataclass(frozen=True)
class UnlockRow:
    transfer_id: str
    state: str  # 'unlocked' | 'blocked' | 'scan_pending' | 'refused'
    source: str  # 'password-mail' | 'sender-form'
    at: datetime
    reason: str
    keep_original: bool


@dataclass(frozen=True)
class ExtractedRow:
    id: str
    transfer_id: str
    source_file: str
    display_name: str
    size: int
    sha256: str
    blob_id: str
    wrapped_key: bytes
    position: int


def _unlock(row) -> UnlockRow:
    return UnlockRow(
        transfer_id=row["transfer_id"], state=row["state"], source=row["source"],
        at=from_text(row["at"]), reason=row["reason"], keep_original=bool(row["keep_original"]),
    )


class UnlockStore:
    def __init__(self, db: Database):
        self._db = db

    def of(self, transfer_id: str) -> UnlockRow | None:
        rows = self._db.query("SELECT * FROM unlocks WHERE transfer_id = ?", (transfer_id,))
        return _unlock(rows[0]) if rows else None

    def extracted_of(self, transfer_id: str) -> list[ExtractedRow]:
        rows = self._db.query(
            "SELECT * FROM extracted_files WHERE transfer_id = ? ORDER BY position, id",
            (transfer_id,),
        )
        return [ExtractedRow(**dict(row)) for row in rows]

    def served(self, transfer_id: str) -> tuple[list[FileRow], bool]:
        """The files a link of this transfer offers, and whether the transfer is blocked: once
        unlocked, the extracted files (and the encrypted ZIP too if the policy keeps it)."""
        originals = self._db.files_of(transfer_id)
        unlock = self.of(transfer_id)
        if unlock is None or unlock.state in ("refused", "scan_pending"):
            return originals, False
        if unlock.state == "blocked":
            return [], True
        extracted = [
            FileRow(e.id, e.transfer_id, e.display_name, "application/octet-stream", e.size,
                    e.sha256, e.blob_id, e.wrapped_key, e.position)
            for e in self.extracted_of(transfer_id)
        ]
        return extracted + (originals if unlock.keep_original else []), False

    def waiting_for_password(self, sender: str, recipients: tuple[str, ...], since: datetime,
                             now: datetime) -> list[tuple[TransferRow, frozenset[str]]]:
        """The sender's live transfers from `since` on that are still locked and hold an active
        link to one of `recipients`, newest first, each with those recipients (lower case).
        One query, driven by the recipients' links (links_by_recipient): the sender's other
        transfers, however many, are never read."""
        wanted = sorted({r.lower() for r in recipients})
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._db.query(
            # In this order (SQLite's CROSS JOIN keeps it), from the recipients' links to
            # their transfers, instead of walking the sender's transfers (transfers_by_sender)
            "SELECT t.*, lower(l.recipient) AS linked FROM links l"
            f" {self._db.dialect.ordered_join} transfers t ON t.id = l.transfer_id"
            f" WHERE lower(l.recipient) IN ({marks}) AND l.state = 'active'"
            " AND lower(t.sender) = lower(?) AND t.created_at >= ? AND t.state = 'active'"
            " AND t.expires_at > ?"
            " AND NOT EXISTS (SELECT 1 FROM unlocks u WHERE u.transfer_id = t.id)"
            " ORDER BY t.created_at DESC, t.id",
            (*wanted, sender, to_text(since), to_text(now)),
        )
        found: dict[str, tuple[TransferRow, set[str]]] = {}
        for row in rows:
            fields = dict(row)
            linked = fields.pop("linked")
            entry = found.setdefault(fields["id"], (transfer_row(fields), set()))
            entry[1].add(linked)
        return [(transfer, frozenset(linked)) for transfer, linked in found.values()]

    def record(
        self, transfer_id: str, state: str, source: str, now: datetime, *,
        reason: str = "", keep_original: bool = False,
        extracted: tuple[ExtractedRow, ...] = (), detail: dict | None = None,
    ) -> bool:
        """Record the outcome, its files and its audit event in one commit; False if another
        outcome was recorded first (the first password that worked wins)."""
        with self._db.transaction():
            changed = self._db.write(
                "INSERT INTO unlocks (transfer_id, state, source, at, reason, keep_original)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (transfer_id, state, source, to_text(now), reason, int(keep_original)),
            )
            if changed != 1:
                return False
            for row in extracted:
                self._db.write(
                    "INSERT INTO extracted_files (id, transfer_id, source_file, display_name,"
                    " size, sha256, blob_id, wrapped_key, position)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.id, transfer_id, row.source_file, row.display_name, row.size,
                     row.sha256, row.blob_id, row.wrapped_key, row.position),
                )
            self._db.append_event(
                f"unlock.{state}", now, transfer_id=transfer_id,
                detail={"source": source, "reason": reason, "files": len(extracted),
                        **(detail or {})},
            )
        return True
