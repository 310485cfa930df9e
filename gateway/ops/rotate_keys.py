"""Move what is stored under a retired master key to the current one (`ppap-gateway
rotate-master-key`), or with `check` only say what lies under which key.

Each file's data key is wrapped again, each outbox secret and sealed download password sealed
again, and each generated password's keyed hash made again from the sealed password: under the
current key of the ring (store/keys.py), which every node must already use (docs/cluster.md,
"The master key"). The stored files themselves are not touched: only their 61-byte wrapped keys.
Rows are read in pages and written in short transactions, each row only if it still holds
what was read (store/rewrapping.py), so the nodes serve meanwhile and a second run finds
nothing left to do, or what changed in between.

What cannot be moved is counted with the latest expiry among it, so the administrator knows
until when a retired key is needed: a keyed password hash whose password is no longer sealed,
and the one-time codes not yet used (only their MACs are kept). A row no key of the ring opens
is named by id, and the run ends with status 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from gateway.store.crypto import (
    IntegrityError,
    Opened,
    open_small_with_any,
    seal_small,
    unwrap_data_key_with_any,
    wrap_data_key,
)
from gateway.store.db import Database
from gateway.store.keys import DOWNLOAD_PASSWORD_KEY, KeyRing
from gateway.store.passwords import (
    hash_generated_password,
    is_keyed_hash,
    verify_password,
)
from gateway.store.rewrapping import RewrappingRows, SealedValue, TransferPassword

PAGE = 200  # rows read, and written in one transaction, at a time

# Per table of store/rewrapping.py: what its values are called, how one is opened (with any
# key, saying which) and sealed again (with the current key), given the id it is bound to.
Open = Callable[[KeyRing, str, bytes], Opened]
Seal = Callable[[KeyRing, str, bytes], bytes]
_SEALED_KINDS: dict[str, tuple[str, Open, Seal]] = {
    "files": ("file keys", unwrap_data_key_with_any, wrap_data_key),
    "extracted_files": ("unlocked file keys", unwrap_data_key_with_any, wrap_data_key),
    "outbox": (
        "outbox secrets",
        lambda keys, item_id, sealed: open_small_with_any(keys, item_id.encode(), sealed),
        lambda keys, item_id, plain: seal_small(keys, item_id.encode(), plain),
    ),
}


@dataclass
class KindCount:
    """Where the values of one kind were found, and what became of them."""

    name: str
    current: int = 0  # under the current key already
    moved: int = 0  # moved to it by this run
    retired: int = 0  # under a retired key still (a check moves nothing)
    unknown: int = 0  # under a key that cannot be told, nor changed
    changed: int = 0  # changed by the gateway between read and write: a rerun looks again
    unopenable: list[str] = field(default_factory=list)  # row ids no key opens
    needed_until: datetime | None = None  # latest expiry among `retired` and `unknown`

    def still_needs_a_retired_key(self, expires_at: datetime | None, known: bool = True) -> None:
        if known:
            self.retired += 1
        else:
            self.unknown += 1
        if expires_at is not None and (self.needed_until is None or expires_at > self.needed_until):
            self.needed_until = expires_at


@dataclass
class RotationReport:
    kinds: list[KindCount]
    retired_keys: int
    checked_only: bool
    live_codes: int = 0
    codes_until: datetime | None = None

    @property
    def unopenable(self) -> bool:
        return any(kind.unopenable for kind in self.kinds)


def rotate_master_keys(db: Database, keys: KeyRing, now: datetime,
                       check: bool = False) -> RotationReport:
    """Move everything under a retired key of `keys` to its current key (`check`: count only)."""
    rows = RewrappingRows(db)
    kinds = [_sealed_table(rows, table, keys, check) for table in _SEALED_KINDS]
    kinds += _passwords(rows, keys, check)
    codes, until = rows.live_codes(now)
    return RotationReport(kinds, len(keys.retired), check, codes, until)


def _sealed_table(rows: RewrappingRows, table: str, keys: KeyRing, check: bool) -> KindCount:
    name, open_with_any, seal = _SEALED_KINDS[table]
    count = KindCount(name)
    after = ""
    while page := rows.sealed_values(table, after, PAGE):
        after = page[-1].row_id
        changes: list[tuple[SealedValue, bytes]] = []
        for value in page:
            try:
                opened = open_with_any(keys, value.bound_to, value.sealed)
            except IntegrityError:
                count.unopenable.append(value.row_id)
                continue
            if opened.key_index == 0:
                count.current += 1
            elif check:
                count.still_needs_a_retired_key(value.expires_at)
            else:
                changes.append((value, seal(keys, value.bound_to, opened.plaintext)))
        if changes:
            written = rows.replace_sealed(table, changes)
            count.moved += len(written)
            count.changed += len(changes) - len(written)
    return count


@dataclass(frozen=True)
class _PasswordChange:
    old: TransferPassword
    password_hash: str | None
    password_sealed: bytes
    sealed_moved: bool
    hash_moved: bool


def _passwords(rows: RewrappingRows, keys: KeyRing, check: bool) -> list[KindCount]:
    sealed, hashes = KindCount("sealed passwords"), KindCount("password hashes")
    password_keys = keys.derive(DOWNLOAD_PASSWORD_KEY)
    after = ""
    while page := rows.transfer_passwords(after, PAGE):
        after = page[-1].row_id
        changes = [change for transfer in page
                   if (change := _password_change(transfer, keys, password_keys, sealed, hashes,
                                                  check)) is not None]
        if changes:
            written = rows.replace_passwords(
                (c.old, c.password_hash, c.password_sealed) for c in changes)
            for change in changes:
                moved = change.old.row_id in written
                for kind, its_own in ((sealed, change.sealed_moved), (hashes, change.hash_moved)):
                    if its_own:
                        kind.moved += moved
                        kind.changed += not moved
    return [sealed, hashes]


def _password_change(transfer: TransferPassword, keys: KeyRing, password_keys: KeyRing,
                     sealed: KindCount, hashes: KindCount, check: bool) -> _PasswordChange | None:
    """Count one transfer's password; what to write for it, if anything is to move."""
    keyed = transfer.password_hash is not None and is_keyed_hash(transfer.password_hash)
    if transfer.password_sealed is None:
        if keyed:  # nothing to make it again from: it lives, under its key, until it expires
            hashes.still_needs_a_retired_key(transfer.expires_at, known=False)
        return None
    try:
        opened = open_small_with_any(keys, transfer.row_id.encode(), transfer.password_sealed)
    except IntegrityError:
        sealed.unopenable.append(transfer.row_id)
        return None
    password = opened.plaintext.decode()
    move_sealed = _count(sealed, opened.key_index, transfer, check)
    move_hash = False
    if keyed:
        assert transfer.password_hash is not None
        index = next((i for i, key in enumerate(password_keys.all)
                      if verify_password(password, transfer.password_hash, key)), None)
        if index is None:
            hashes.unopenable.append(transfer.row_id)
        else:
            move_hash = _count(hashes, index, transfer, check)
    if not (move_sealed or move_hash):
        return None
    return _PasswordChange(
        transfer,
        hash_generated_password(password, password_keys.current) if move_hash
        else transfer.password_hash,
        seal_small(keys, transfer.row_id.encode(), opened.plaintext) if move_sealed
        else transfer.password_sealed,
        move_sealed, move_hash,
    )


def _count(kind: KindCount, key_index: int, transfer: TransferPassword, check: bool) -> bool:
    """Count a value found under key `key_index`; whether it is to move."""
    if key_index == 0:
        kind.current += 1
        return False
    if check:
        kind.still_needs_a_retired_key(transfer.expires_at)
        return False
    return True


# -- the report --------------------------------------------------------------------------------

_COLUMNS = ("current", "moved", "retired", "unknown", "changed", "no key")


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def format_report(report: RotationReport, out: TextIO) -> None:
    out.write(f"master keys: the current one and {report.retired_keys} retired"
              f"{'; checked only, nothing written' if report.checked_only else ''}\n")
    out.write(f"{'':20}" + "".join(f"{c:>9}" for c in _COLUMNS) + "  retired key needed until\n")
    for kind in report.kinds:
        counts = (kind.current, kind.moved, kind.retired, kind.unknown, kind.changed,
                  len(kind.unopenable))
        out.write(f"{kind.name:20}" + "".join(f"{n:>9}" for n in counts)
                  + f"  {_when(kind.needed_until)}\n")
    if report.live_codes:
        out.write(f"one-time codes not yet used: {report.live_codes}, the last expiring"
                  f" {_when(report.codes_until)}; one mailed under a retired key no longer"
                  " matches once that key is gone (its recipient asks for another)\n")
    for kind in report.kinds:
        out.writelines(f"no key opens: {kind.name} {row_id}\n" for row_id in kind.unopenable)
    out.write(_verdict(report) + "\n")


def _verdict(report: RotationReport) -> str:
    kinds = report.kinds
    if report.unopenable:
        return ("some rows open under no key given: add the key they were sealed with as a"
                " retired key and run again (or, if it is lost, those files are too)")
    if any(kind.retired for kind in kinds):
        return "values lie under a retired key: run rotate-master-key without --check"
    if any(kind.changed for kind in kinds):
        return "values changed meanwhile: run rotate-master-key again"
    if any(kind.unknown for kind in kinds):
        until = max((kind.needed_until for kind in kinds if kind.needed_until), default=None)
        return f"keep the retired keys until {_when(until)}: some values cannot be moved"
    return ("nothing lies under a retired key: the retired keys may go (from every node,"
            " then a restart)")
