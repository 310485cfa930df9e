"""`ppap-gateway migrate-store`: copy an embedded deployment (its SQLite file and blob directory)
into the clustered store (PostgreSQL; files in a directory every node mounts, or in the
database), verifiably, and safe to run again.

A run:
1. refuses a target that gateways are connected to (after the cut-over the cluster owns it) or
   that another copy holds, and migrates the target's schema to this program's version (a
   newer one is refused, as is a source at another version than the program's);
2. in one read transaction on the SQLite file (a snapshot: a running gateway goes on writing
   meanwhile) walks every table the schema defines, but those store/copying.py NOT_COPIED
   lists, in key order against the target, inside one target transaction: rows the target
   lacks are inserted, rows that differ updated, rows gone from the source (purged since an
   earlier run) counted, and with --prune deleted, children first; sequences are moved past
   every id the source gave; the snapshot's count and hash per table are kept and the blob ids
   it references listed;
3. ends the snapshot, then for each referenced blob copies the sealed bytes (streamed, never
   decrypted) where the target lacks them or holds other bytes, and reads each copy back;
4. commits the rows (after their blobs, as the gateway commits a file after its bytes), then
   with --prune deletes the target's blobs that only pruned rows referred to;
5. reads the target's tables again and compares count and hash with the snapshot's.
`verify_only` does the comparison alone (a new snapshot, naming the rows that differ) and writes
nothing. True only if every table, sequence and blob matches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from gateway.config import PostgresUrl, StorageSettings
from gateway.ops.migrate_report import BlobCheck, Outcome, TableCheck, format_outcome
from gateway.ops.row_compare import Change, OutOfOrder, TableDigest, changes, encode_row
from gateway.store.blob_backends import BlobBackend, BlobMissingError
from gateway.store.copying import (
    BATCH,
    CopyError,
    PostgresTarget,
    SqliteSnapshot,
    Table,
    copy_sealed,
    schema_versions_of_program,
    sealed_sha256,
)
from gateway.store.db import Database, MetadataError

NAMED_PER_TABLE = 5  # rows named per table when they differ


class MigrationRefused(Exception):
    """The store cannot be copied as asked (the wrong source or target, a schema version, a
    target in use or out of reach); nothing was copied."""


BackendOpener = Callable[[StorageSettings], BlobBackend]
Progress = Callable[[str], None]
BLOBS_PER_PROGRESS = 1000  # a progress line per this many blobs


def migrate_store(source: StorageSettings, target: StorageSettings, open_backend: BackendOpener,
                  *, prune: bool = False, verify_only: bool = False,
                  out: TextIO) -> bool:
    """Copy (or with `verify_only` only compare) `source` into `target`, report on `out`;
    True if everything matches. `open_backend` builds a blob backend for storage settings
    (gateway.app.blob_backend). MigrationRefused before anything is written; CopyError if
    the copy fails on the way (the rows of this run are then not committed)."""
    if isinstance(source.database, PostgresUrl):
        raise MigrationRefused(f"the store is on PostgreSQL already ({source.database})")
    if not isinstance(target.database, PostgresUrl):
        raise MigrationRefused("the target must be a PostgreSQL database (postgresql://…)")
    _describe(source, target, out)

    def progress(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    try:
        with SqliteSnapshot(source.database) as snapshot:  # before the target is touched
            _check_version("source", snapshot.schema_versions(), "start this version's gateway"
                           " on it once (it migrates its store at start), then copy")
    except CopyError as error:  # no database there, or not one SQLite can read
        raise MigrationRefused(f"source: {error}") from None
    if verify_only:
        outcome = _verify(source, target, open_backend, progress)
    else:
        _prepare_target(target.database)
        outcome = _copy(source, target, open_backend, prune, progress)
    out.write(format_outcome(outcome, verify_only=verify_only))
    return outcome.matches


def _describe(source: StorageSettings, target: StorageSettings, out: TextIO) -> None:
    key = (f"${source.master_key_env}" if source.master_key_from_env is not None
           else str(source.master_key_file))
    out.write(
        f"source  {source.database}, files in {source.blobs_dir}\n"
        f"target  {target.database}, files "
        + ("in the database\n" if target.blobs == "database" else f"in {target.blobs_dir}\n")
        + "Files are copied as sealed bytes, never decrypted: every node of the target needs"
        f" this gateway's master key ({key}).\n")


def _connect(url: PostgresUrl, *, read_only: bool = False) -> PostgresTarget:
    try:
        return PostgresTarget(url, read_only=read_only)
    except CopyError as error:
        raise MigrationRefused(str(error)) from None


def _prepare_target(url: PostgresUrl) -> None:
    """Refuse a target in use; bring its schema to this program's version."""
    with _connect(url) as target:
        sessions = target.gateway_sessions()
    if sessions:
        raise MigrationRefused(
            f"{sessions} session(s) of a gateway are connected to {url}: a copy would overwrite"
            " what the cluster writes. Copy before its nodes start, or with them stopped")
    try:
        Database(url).close()  # applies the migrations this program brings, under their lock
    except MetadataError as error:
        raise MigrationRefused(f"target: {error}") from None


def _check_version(side: str, versions: set[int], fix: str) -> None:
    """Both stores must hold exactly the migrations this program brings."""
    program = schema_versions_of_program("sqlite")
    if versions == program:
        return
    newest = max(versions, default=0)
    if versions - program:
        raise MigrationRefused(f"the {side} is at schema version {newest}, newer than this"
                               f" program ({max(program)})")
    raise MigrationRefused(f"the {side} is at schema version {newest}, this program at"
                           f" {max(program)}: {fix}")


def _check_target_version(target: PostgresTarget) -> None:
    _check_version("target", target.schema_versions(),
                   "run migrate-store without --verify-only first")


def _tables(snapshot: SqliteSnapshot, target: PostgresTarget) -> list[tuple[Table, Table]]:
    """(source, target) descriptions of every table to copy, parents first; refused unless the
    two schemas have the same tables, columns and keys."""
    theirs = target.tables()
    pairs = []
    for mine in snapshot.tables():
        other = theirs.pop(mine.name, None)
        if other is None:
            raise MigrationRefused(f"the target has no table {mine.name}")
        if (other.columns, other.key) != (mine.columns, mine.key):
            raise MigrationRefused(
                f"table {mine.name} differs: source columns {', '.join(mine.columns)} key"
                f" {', '.join(mine.key)}; target columns {', '.join(other.columns)} key"
                f" {', '.join(other.key)}")
        pairs.append((mine, other))
    if theirs:
        raise MigrationRefused(f"the source has no table {', '.join(sorted(theirs))}")
    return pairs


def _walk(snapshot: SqliteSnapshot, target: PostgresTarget, mine: Table, other: Table,
          check: TableCheck) -> Iterator[Change]:
    try:
        yield from changes(
            snapshot.rows(mine), target.rows(other), key_positions=mine.key_positions,
            unique=mine.has_primary_key, source_digest=check.source,
            target_digest=check.target)
    except OutOfOrder as error:
        raise CopyError(f"table {mine.name}: {error}") from None


# -- the copy -------------------------------------------------------------------------------


@dataclass
class _Pending:
    """One table's writes, sent a batch at a time."""

    target: PostgresTarget
    table: Table
    inserts: list[tuple] = field(default_factory=list)
    updates: list[tuple] = field(default_factory=list)

    def add(self, change: Change) -> None:
        assert change.row is not None
        (self.inserts if change.kind == "missing" else self.updates).append(change.row)
        if len(self.inserts) + len(self.updates) >= BATCH:
            self.flush()

    def flush(self) -> None:
        self.target.insert(self.table, self.inserts)
        self.target.update(self.table, self.updates)
        self.inserts, self.updates = [], []


def _copy(source: StorageSettings, target_storage: StorageSettings,
          open_backend: BackendOpener, prune: bool, progress: Progress) -> Outcome:
    url = target_storage.database
    assert isinstance(url, PostgresUrl)
    with _connect(url) as target:
        if not target.take_copy_lock():
            raise MigrationRefused(f"another migrate-store is copying into {url}")
        _check_target_version(target)
        with SqliteSnapshot(source.database) as snapshot:
            _check_version("source", snapshot.schema_versions(), "copy again")
            pairs = _tables(snapshot, target)
            checks, gone = _copy_rows(snapshot, target, pairs)
            blob_ids = snapshot.blob_ids(table for table, _ in pairs)
            referenced_before = set(target.blob_ids(other for _, other in pairs))
        # The snapshot ends here: the blobs take long, the gateway's checkpoints may not wait.
        progress(f"rows: {len(pairs)} tables walked in one snapshot of the source:"
                 f" {sum(check.new for check in checks)} new, "
                 f"{sum(check.changed for check in checks)} changed (not committed yet)")
        if prune:
            _prune_rows(target, pairs, checks, gone)
        progress(f"blobs: {len(blob_ids)} referenced; each is hashed on both sides and copied"
                 " where the target lacks it or differs")
        blobs = _copy_blobs(source, target_storage, open_backend, blob_ids, progress)
        target.commit()
    pruned_blobs = (referenced_before - set(blob_ids)) if prune else set()
    _delete_blobs(target_storage, open_backend, pruned_blobs)
    progress("rows committed; reading the target again to compare it with the snapshot")
    return _check_after_copy(url, pairs, checks, blobs, len(pruned_blobs))


def _copy_rows(snapshot: SqliteSnapshot, target: PostgresTarget,
               pairs: list[tuple[Table, Table]]) -> tuple[list[TableCheck], dict[str, list]]:
    checks, gone = [], {}
    for mine, other in pairs:
        check = TableCheck(mine.name)
        pending, gone[mine.name] = _Pending(target, other), []
        for change in _walk(snapshot, target, mine, other, check):
            check.count(change)
            if change.kind == "gone":
                gone[mine.name].append(change.key)
            else:
                pending.add(change)
        pending.flush()
        target.advance_identity(other, snapshot.sequence(mine.name))
        checks.append(check)
    return checks, gone


def _prune_rows(target: PostgresTarget, pairs: list[tuple[Table, Table]],
                checks: list[TableCheck], gone: dict[str, list]) -> None:
    """Children first; after the upserts, so the audit horizon has moved before old events go."""
    by_name = {check.name: check for check in checks}
    for _mine, other in reversed(pairs):
        keys = gone[other.name]
        for start in range(0, len(keys), BATCH):
            target.delete(other, keys[start:start + BATCH])
        by_name[other.name].pruned = len(keys)


def _copy_blobs(source: StorageSettings, target: StorageSettings, open_backend: BackendOpener,
                blob_ids: list[str], progress: Progress) -> list[BlobCheck]:
    source_blobs, target_blobs = open_backend(source), open_backend(target)
    checks = []
    try:
        for done, blob_id in enumerate(blob_ids, 1):
            checks.append(_copy_blob(source_blobs, target_blobs, blob_id))
            if done % BLOBS_PER_PROGRESS == 0:
                progress(f"blobs: {done} of {len(blob_ids)} done,"
                         f" {sum(check.copied for check in checks)} copied")
        return checks
    finally:
        source_blobs.close()
        target_blobs.close()


def _copy_blob(source: BlobBackend, target: BlobBackend, blob_id: str) -> BlobCheck:
    """Copied when the target lacks it or holds other bytes; a copy is read back."""
    replaced = target.exists(blob_id)
    if replaced:
        source_sha, target_sha = sealed_sha256(source, blob_id), sealed_sha256(target, blob_id)
        if source_sha is None or source_sha == target_sha:
            return BlobCheck(blob_id, source_sha, target_sha)
        target.delete(blob_id)  # other bytes than the source's
    elif not source.exists(blob_id):
        return BlobCheck(blob_id, None, None)  # purged on the source since the snapshot
    try:
        source_sha = copy_sealed(source, target, blob_id)
    except BlobMissingError:  # purged on the source while it was read: the upload was abandoned
        return BlobCheck(blob_id, None, sealed_sha256(target, blob_id))
    return BlobCheck(blob_id, source_sha, sealed_sha256(target, blob_id), copied=True,
                     replaced=replaced)


def _delete_blobs(target: StorageSettings, open_backend: BackendOpener, blob_ids: set[str]
                  ) -> None:
    if not blob_ids:
        return
    blobs = open_backend(target)
    try:
        for blob_id in sorted(blob_ids):
            blobs.delete(blob_id)
    finally:
        blobs.close()


def _check_after_copy(url: PostgresUrl, pairs: list[tuple[Table, Table]],
                      checks: list[TableCheck], blobs: list[BlobCheck],
                      blobs_pruned: int) -> Outcome:
    """The committed target, read again, against the snapshot's counts and hashes."""
    with PostgresTarget(url, read_only=True) as target:
        for (_mine, other), check in zip(pairs, checks):
            check.target = TableDigest()
            for row in target.rows(other):
                check.target.add(encode_row(row))
        behind = [f"{other.name}.{other.identity}" for _, other in pairs
                  if target.identity_behind(other)]
    return Outcome(checks, behind, blobs, blobs_pruned)


# -- verification alone ---------------------------------------------------------------------


def _verify(source: StorageSettings, target_storage: StorageSettings,
            open_backend: BackendOpener, progress: Progress) -> Outcome:
    url = target_storage.database
    assert isinstance(url, PostgresUrl)
    with _connect(url, read_only=True) as target:
        _check_target_version(target)
        with SqliteSnapshot(source.database) as snapshot:
            _check_version("source", snapshot.schema_versions(), "verify again")
            pairs = _tables(snapshot, target)
            checks = []
            for mine, other in pairs:
                check = TableCheck(mine.name)
                for change in _walk(snapshot, target, mine, other, check):
                    check.count(change)
                    if len(check.named) < NAMED_PER_TABLE:
                        check.named.append(_named(mine, change))
                checks.append(check)
            blob_ids = snapshot.blob_ids(table for table, _ in pairs)
        behind = [f"{other.name}.{other.identity}" for _, other in pairs
                  if target.identity_behind(other)]
    progress(f"blobs: {len(blob_ids)} referenced; hashing each on both sides")
    source_blobs, target_blobs = open_backend(source), open_backend(target_storage)
    try:
        blobs = [BlobCheck(blob_id, sealed_sha256(source_blobs, blob_id),
                           sealed_sha256(target_blobs, blob_id)) for blob_id in blob_ids]
    finally:
        source_blobs.close()
        target_blobs.close()
    return Outcome(checks, behind, blobs, 0)


def _named(table: Table, change: Change) -> str:
    key = ", ".join(f"{column}={value!r}" for column, value in zip(table.key, change.key))
    what = {"missing": "missing on the target", "differs": "differs",
            "gone": "gone from the source"}[change.kind]
    return f"{key}: {what}"
