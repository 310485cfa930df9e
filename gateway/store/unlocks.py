"""What became of a transfer's encrypted ZIP once its password was known: unlocked (the files
extracted from it, stored encrypted like any attachment), blocked (a virus), or refused (a
ZIP bomb, say). Also finds the transfers a password mail may belong to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Database, FileRow, TransferRow, from_text, to_text


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

    def waiting_for_password(self, sender: str, since: datetime, now: datetime) -> list[TransferRow]:
        """The sender's live transfers from `since` on that are still locked, newest first."""
        transfers = [
            t for t in self._db.transfers_since(since, sender)
            if t.state == "active" and t.expires_at > now
        ]
        locked = [t for t in transfers if self.of(t.id) is None]
        return sorted(locked, key=lambda t: t.created_at, reverse=True)

    def record(
        self, transfer_id: str, state: str, source: str, now: datetime, *,
        reason: str = "", keep_original: bool = False,
        extracted: tuple[ExtractedRow, ...] = (), detail: dict | None = None,
    ) -> bool:
        """Record the outcome, its files and its audit event in one commit; False if another
        outcome was recorded first (the first password that worked wins)."""
        with self._db.transaction():
            changed = self._db.write(
                "INSERT OR IGNORE INTO unlocks (transfer_id, state, source, at, reason,"
                " keep_original) VALUES (?, ?, ?, ?, ?, ?)",
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
