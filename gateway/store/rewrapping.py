"""The rows that hold something sealed, wrapped or keyed under a master key, for a rotation
(gateway/ops/rotate_keys.py): read in pages by id, and rewritten in short transactions, each row
on the condition that it still holds what was read (a compare-and-set), so the gateway may go
on serving, and changing those rows, meanwhile.

What is under a master key, by table: the data key of each stored file (`files`,
`extracted_files`: wrapped_key, bound to the blob id), the secrets of an outbox item not yet
sent (`outbox.sealed`, bound to the item id), and a transfer's download password
(`transfers.password_sealed`, bound to the transfer id; `password_hash`, keyed with a key
derived from the master key). One-time codes (`link_otp.code_hash`) are MACs under the portal
secret, also derived from it; the codes themselves are not kept, so those cannot be moved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Database, from_text, to_text

# Each table holding one sealed value per row: (its id, the id the sealing is bound to, the
# sealed bytes, the expiry of the transfer it serves) after an id, and the compare-and-set.
_SEALED_PAGES = {
    table: (
        (f"SELECT x.id, x.blob_id, x.wrapped_key, t.expires_at FROM {table} x"
         " LEFT JOIN transfers t ON t.id = x.transfer_id WHERE x.id > ? ORDER BY x.id LIMIT ?"),
        f"UPDATE {table} SET wrapped_key = ? WHERE id = ? AND wrapped_key = ?",
    )
    for table in ("files", "extracted_files")
} | {
    "outbox": (
        ("SELECT o.id, o.id, o.sealed, t.expires_at FROM outbox o"
         " LEFT JOIN transfers t ON t.id = o.transfer_id"
         " WHERE o.sealed IS NOT NULL AND o.id > ? ORDER BY o.id LIMIT ?"),
        "UPDATE outbox SET sealed = ? WHERE id = ? AND sealed = ?",
    ),
}
SEALED_TABLES = tuple(_SEALED_PAGES)


@dataclass(frozen=True)
class SealedValue:
    """One value sealed under a master key, as read."""

    row_id: str
    bound_to: str  # the id its sealing is bound to (associated data)
    sealed: bytes
    expires_at: datetime | None  # of the transfer it serves, if it serves one


@dataclass(frozen=True)
class TransferPassword:
    """A transfer's download password as kept: hashed (to check), sealed (to send)."""

    row_id: str
    password_hash: str | None
    password_sealed: bytes | None
    expires_at: datetime


class RewrappingRows:
    def __init__(self, db: Database):
        self._db = db

    # -- reading, a page at a time ----------------------------------------------------------

    def sealed_values(self, table: str, after: str, limit: int) -> list[SealedValue]:
        """Up to `limit` sealed values of `table` (one of SEALED_TABLES) whose row id sorts
        after `after`, in id order."""
        select, _ = _SEALED_PAGES[table]
        return [SealedValue(row[0], row[1], bytes(row[2]), from_text(row[3]))
                for row in self._db.query(select, (after, limit))]

    def transfer_passwords(self, after: str, limit: int) -> list[TransferPassword]:
        """Up to `limit` transfers that keep a password (hashed or sealed), in id order."""
        rows = self._db.query(
            "SELECT id, password_hash, password_sealed, expires_at FROM transfers"
            " WHERE (password_hash IS NOT NULL OR password_sealed IS NOT NULL) AND id > ?"
            " ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [TransferPassword(row[0], row[1], None if row[2] is None else bytes(row[2]),
                                 from_text(row[3])) for row in rows]

    def live_codes(self, now: datetime) -> tuple[int, datetime | None]:
        """How many one-time codes may still be typed at `now`, and when the last expires."""
        (count, last), = self._db.query(
            "SELECT COUNT(*), MAX(expires_at) FROM link_otp"
            " WHERE code_hash <> '' AND expires_at > ?",
            (to_text(now),),
        )
        return count, from_text(last)

    # -- rewriting: one short transaction per batch, each row compared and set -------------

    def replace_sealed(self, table: str, changes: Iterable[tuple[SealedValue, bytes]]) -> set[str]:
        """Write each new sealed value where its row still holds the one read; the ids of the
        rows written (the others changed meanwhile: purged, sent, rewritten)."""
        _, update = _SEALED_PAGES[table]
        written = set()
        with self._db.transaction():
            for value, sealed in changes:
                if self._db.write(update, (sealed, value.row_id, value.sealed)) == 1:
                    written.add(value.row_id)
        return written

    def replace_passwords(
        self, changes: Iterable[tuple[TransferPassword, str | None, bytes]]
    ) -> set[str]:
        """Write each (new hash, new sealed password) where the transfer still holds the pair
        read; the ids of the transfers written."""
        written = set()
        with self._db.transaction():
            for old, password_hash, password_sealed in changes:
                assert old.password_sealed is not None  # nothing to move without it
                same_hash = "password_hash IS NULL" if old.password_hash is None \
                    else "password_hash = ?"
                changed = self._db.write(
                    "UPDATE transfers SET password_hash = ?, password_sealed = ?"
                    f" WHERE id = ? AND password_sealed = ? AND {same_hash}",
                    (password_hash, password_sealed, old.row_id, old.password_sealed,
                     *(() if old.password_hash is None else (old.password_hash,))),
                )
                if changed == 1:
                    written.add(old.row_id)
        return written
