"""Keep transfer metadata behind a small repository API (MetadataStore), on SQLite or PostgreSQL.

All SQL lives here, in the other repositories of this package and in migrations/ENGINE/*.sql;
one set of statements serves both engines, and what differs between them (connections,
transactions, placeholders, a few phrases, errors) is isolated in store/engines.py. Timestamps
come in as aware datetimes (the caller owns the clock) and are stored as fixed-width UTC text on
both engines, so rows, comparisons and copies between them are the same.

Every commit is on disk when transaction() returns, except inside
store.durability.deferring_commits() on SQLite (the relay): there it waits for the barrier's
next flush (group commit), which the relay awaits before it answers or hands a link on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from gateway.config import PostgresUrl
from gateway.store.durability import DurabilityBarrier, Sync, SyncedAtCommit
from gateway.store.engines import (  # MetadataError re-exported: callers catch it from here
    KEY_LOCKS_FROM,
    RUN_LOCKS,
    Dialect,
    MetadataError,
    PostgresEngine,
    SqliteEngine,
    open_engine,
)
from gateway.store.rows import (  # re-exported: the store's row types are imported from here
    EventRow,
    FileRow,
    LinkRow,
    PasswordGuardRow,
    TransferRow,
    event_row,
    from_text,
    link_row,
    to_text,
    transfer_row,
)

_MIGRATION_NAME = re.compile(r"(\d{4})_[A-Za-z0-9_]+\.sql")
# A pending transfer nobody has used since a cut-off (both `?`): neither made then nor given a
# link since (a retry that reuses it issues a fresh link in the commit that checks it is there).
_STALE_PENDING = (
    "state = 'pending' AND created_at < ? AND NOT EXISTS (SELECT 1 FROM links"
    " WHERE links.transfer_id = transfers.id AND links.created_at >= ?)"
)
DEFAULT_POOL_SIZE = 10  # PostgreSQL connections per process (the threads of asyncio.to_thread)


class MetadataStore(Protocol):
    """What the gateway needs from a metadata backend."""

    barrier: DurabilityBarrier | SyncedAtCommit  # awaited where deferred commits must be on disk

    def transaction(self) -> AbstractContextManager[None]: ...
    def insert_transfer(self, *, id: str, fingerprint: str, message_id: str, sender: str,
                        department: str, subject: str, created_at: datetime,
                        expires_at: datetime, password_channel: str, locale: str,
                        state: str = "pending", password_hash: str | None = None,
                        password_sealed: bytes | None = None,
                        policy: str | None = None) -> None: ...
    def insert_file(self, *, id: str, transfer_id: str, display_name: str, content_type: str,
                    size: int, sha256: str, blob_id: str, wrapped_key: bytes,
                    position: int) -> None: ...
    def insert_link(self, *, id: str, transfer_id: str, recipient: str, token_hash: str,
                    created_at: datetime, state: str = "pending", max_downloads: int = 0,
                    download_count: int = 0, activated_at: datetime | None = None
                    ) -> None: ...
    def activate_link(self, link_id: str, at: datetime) -> bool: ...
    def activate_earlier_links(self, link_id: str, at: datetime) -> list[str]: ...
    def fail_links(self, link_ids: Iterable[str]) -> None: ...
    def claim_download(self, link_id: str) -> bool: ...
    def set_transfer_state(self, transfer_id: str, state: str) -> None: ...
    def record_delivery(self, fingerprint: str, recipient: str, at: datetime,
                        transfer_id: str | None = None, link_id: str | None = None
                        ) -> None: ...
    def delivered_recipients(self, fingerprint: str) -> set[str]: ...
    def transfer(self, transfer_id: str) -> TransferRow | None: ...
    def transfer_by_fingerprint(self, fingerprint: str) -> TransferRow | None: ...
    def transfer_ids_starting(self, prefix: str, limit: int) -> list[str]: ...
    def files_of(self, transfer_id: str) -> list[FileRow]: ...
    def links_of(self, transfer_id: str) -> list[LinkRow]: ...
    def link_by_token_hash(self, token_hash: str) -> LinkRow | None: ...
    def append_event(self, kind: str, at: datetime, transfer_id: str | None = None,
                     link_id: str | None = None, recipient: str | None = None,
                     detail: dict[str, Any] | None = None) -> None: ...
    def events(self, transfer_id: str | None = None) -> list[EventRow]: ...
    def events_since(self, since: datetime) -> Iterator[EventRow]: ...
    def transfers_since(self, since: datetime, sender: str | None = None) -> list[TransferRow]: ...
    def link(self, link_id: str) -> LinkRow | None: ...
    def reusable(self, transfer_id: str, now: datetime) -> bool: ...
    def stale_pending_transfers(self, older_than: datetime) -> list[str]: ...
    def failed_or_expired_transfers(self, now: datetime) -> list[str]: ...
    def half_purged_transfers(self) -> list[str]: ...
    def claim_for_purge(self, transfer_id: str, now: datetime,
                        stale_before: datetime) -> str | None: ...
    def referenced_blob_ids(self) -> set[str]: ...
    def blob_ids_of(self, transfer_id: str) -> list[str]: ...
    def mark_purged(self, transfer_id: str, state: str = "purged") -> None: ...
    def forget_deliveries_before(self, before: datetime, limit: int) -> int: ...
    def forget_events_before(self, before: datetime, limit: int) -> int: ...
    def forget_ended_transfers(self, expired_before: datetime, limit: int) -> int: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...
    def password_guard(self, link_id: str) -> PasswordGuardRow: ...
    def reserve_password_attempt(self, link_id: str, now: datetime,
                                 max_attempts: int) -> bool: ...
    def settle_password_attempt(self, link_id: str, correct: bool, now: datetime,
                                max_attempts: int, lockout: timedelta) -> datetime | None: ...


def _bundled_migrations(engine: str) -> Traversable:
    return resources.files("gateway.store").joinpath("migrations", engine)


def _read_migrations(directory: Traversable | Path) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every NNNN_name.sql, in version order."""
    found: dict[int, tuple[int, str, str]] = {}
    for entry in directory.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MetadataError(f"two migrations share version {version}: {entry.name}")
        found[version] = (version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


def metadata_exists(location: Path | PostgresUrl) -> bool:
    """Whether metadata was ever stored there (a missing master key is then an accident, not a
    first start). DatabaseUnreachable when the server cannot be asked."""
    if not isinstance(location, PostgresUrl):
        return location.exists()
    engine = PostgresEngine(location, timeout=5.0, pool_size=1)
    try:
        return bool(engine.query("SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0])
    finally:
        engine.close()


class Database:
    """The MetadataStore, on the SQLite file or the PostgreSQL database `location` names. Safe
    to share between threads.

    SQLite only: `group_commit=False` runs the connection at `synchronous=FULL` instead, every
    commit synced by SQLite itself and none deferred (the old way, kept for comparison:
    bench/commit_cost.py); `fsync` syncs the -wal file (tests count or hold it).
    PostgreSQL only: `pool_size` connections at most. `busy_timeout_ms` is how long a write
    waits for a lock (SQLite's database lock, PostgreSQL's row locks) or for a connection."""

    def __init__(
        self,
        location: Path | PostgresUrl,
        *,
        busy_timeout_ms: int = 5000,
        migrations: Traversable | Path | None = None,
        group_commit: bool = True,
        fsync: Sync = os.fdatasync,
        pool_size: int = DEFAULT_POOL_SIZE,
    ):
        self.location = location
        self._engine = open_engine(location, busy_timeout_ms=busy_timeout_ms,
                                   group_commit=group_commit, fsync=fsync, pool_size=pool_size)
        self.barrier: DurabilityBarrier | SyncedAtCommit = self._engine.barrier
        try:
            self._migrate(migrations if migrations is not None
                          else _bundled_migrations(self._engine.dialect.name))
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path | PostgresUrl:
        """The SQLite file (tests and benches open it themselves), or the PostgresUrl."""
        return self.location

    @property
    def dialect(self) -> Dialect:
        """The engine's name and the phrases it spells its own way (store/engines.py)."""
        return self._engine.dialect

    @property
    def _conn(self):
        """SQLite only: the shared connection (tests trace the statements it runs)."""
        assert isinstance(self._engine, SqliteEngine)
        return self._engine.connection

    # -- statements and transactions -------------------------------------------------

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Run one statement; the result has `rowcount` (and `fetchall()`)."""
        return self._engine.execute(sql, params)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Run one statement and return its rows (by position or column name)."""
        return self._engine.query(sql, params)

    def transaction(self) -> AbstractContextManager[None]:
        """BEGIN (IMMEDIATE on SQLite) … COMMIT, or ROLLBACK if the block raises. Nests via
        savepoints. Durable when it returns (but see deferring_commits)."""
        return self._engine.transaction()

    async def synced(self) -> None:
        """Return once every commit made before the call, by any process, is on disk: before
        something a deferred commit wrote leaves the gateway. MetadataError if the sync fails."""
        await self._engine.synced()

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database and truncate it (after purges, so old pages
        go). PostgreSQL: nothing (the server checkpoints)."""
        self._engine.checkpoint()

    def exclusive_run(self, name: str) -> AbstractContextManager[bool]:
        """`with db.exclusive_run("housekeeping") as ours:` whether no other process on any
        node is making this run now; if so, none starts one until the block ends. PostgreSQL:
        an advisory lock, tried, not waited for. SQLite: always ours (one machine, one leader)."""
        return self._engine.exclusive_run(RUN_LOCKS[name])

    def lock_key(self, key: str) -> None:
        """Inside a transaction: another transaction locking the same key, on any node, waits
        until this one ends (SQLite's transactions exclude each other already). Keys share
        2^30 locks: two that collide only wait for each other."""
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=4).digest()
        self._engine.lock_key(KEY_LOCKS_FROM | int.from_bytes(digest, "big") % KEY_LOCKS_FROM)

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _locked(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """A SELECT whose rows stay locked until the transaction ends (FOR UPDATE on
        PostgreSQL; on SQLite the transaction's database lock already covers them). Call it
        before reading what the transaction then changes: a later statement sees every
        commit made before the lock was granted."""
        return self._query(sql + self._engine.dialect.for_update, params)

    def _lock_link(self, link_id: str) -> None:
        self._locked("SELECT id FROM links WHERE id = ?", (link_id,))

    def _lock_transfer_of(self, link_id: str) -> None:
        self._locked(
            "SELECT id FROM transfers WHERE id = (SELECT transfer_id FROM links WHERE id = ?)",
            (link_id,),
        )

    # -- migrations ------------------------------------------------------------------

    def _applied_versions(self) -> set[int]:
        return {row[0] for row in self._query("SELECT version FROM schema_migrations")}

    def _migrate(self, directory: Traversable | Path) -> None:
        with self.transaction():
            self._engine.lock_for_migration()
            self._execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        migrations = _read_migrations(directory)
        known = {version for version, _name, _sql in migrations}
        newer = self._applied_versions() - known
        if newer:
            raise MetadataError(f"{self._engine.location}: schema version {max(newer)}"
                                " is newer than this program")
        for version, name, sql in migrations:
            with self.transaction():
                # Checked under the migration lock: another process may have just applied it.
                self._engine.lock_for_migration()
                if version in self._applied_versions():
                    continue
                self._engine.run_script(sql)
                self._execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, to_text(datetime.now(timezone.utc))),
                )

    # -- writes ----------------------------------------------------------------------

    def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement in (or as) a transaction; return the rows it changed."""
        return self._engine.write(sql, params)

    def write_returning(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Run one statement with RETURNING in (or as) a transaction; return its rows."""
        return self._engine.write_returning(sql, params)

    # The other repositories of this package (store/outbox.py, store/controls.py) share this
    # database, its connections and its transactions through these.
    query = _query
    write = _write
    locked = _locked
    lock_link = _lock_link

    def insert_transfer(
        self, *, id: str, fingerprint: str, message_id: str, sender: str, department: str,
        subject: str, created_at: datetime, expires_at: datetime, password_channel: str,
        locale: str, state: str = "pending", password_hash: str | None = None,
        password_sealed: bytes | None = None, policy: str | None = None,
    ) -> None:
        """`policy`: the snapshot of the policy it is made under (store/policies.py)."""
        self._write(
            "INSERT INTO transfers (id, fingerprint, message_id, sender, department, subject,"
            " created_at, expires_at, state, password_channel, password_hash, password_sealed,"
            " locale, policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (id, fingerprint, message_id, sender, department, subject, to_text(created_at),
             to_text(expires_at), state, password_channel, password_hash, password_sealed,
             locale, policy),
        )

    def insert_file(
        self, *, id: str, transfer_id: str, display_name: str, content_type: str, size: int,
        sha256: str, blob_id: str, wrapped_key: bytes, position: int,
    ) -> None:
        self._write(
            "INSERT INTO files (id, transfer_id, display_name, content_type, size, sha256,"
            " blob_id, wrapped_key, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (id, transfer_id, display_name, content_type, size, sha256, blob_id, wrapped_key,
             position),
        )

    def insert_link(
        self, *, id: str, transfer_id: str, recipient: str, token_hash: str,
        created_at: datetime, state: str = "pending", max_downloads: int = 0,
        download_count: int = 0, activated_at: datetime | None = None,
    ) -> None:
        self._write(
            "INSERT INTO links (id, transfer_id, recipient, token_hash, state, max_downloads,"
            " download_count, created_at, activated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (id, transfer_id, recipient, token_hash, state, max_downloads, download_count,
             to_text(created_at), None if activated_at is None else to_text(activated_at)),
        )

    def activate_link(self, link_id: str, at: datetime) -> bool:
        """Make a delivered link active, and its transfer with it: only if the link is still
        pending and its transfer still has its files (pending or active, not purged, failed or
        gone). False, and nothing changed, otherwise. One statement decides, with the transfer's
        row locked first, so a purge that claimed the transfer a moment earlier wins
        (claim_for_purge)."""
        with self.transaction():
            self._lock_transfer_of(link_id)
            changed = self._execute(
                "UPDATE links SET state = 'active', activated_at = ? WHERE id = ?"
                " AND state = 'pending' AND EXISTS (SELECT 1 FROM transfers"
                " WHERE transfers.id = links.transfer_id AND state IN ('pending', 'active'))",
                (to_text(at), link_id),
            ).rowcount
            if changed:
                self._execute(
                    "UPDATE transfers SET state = 'active' WHERE state = 'pending'"
                    " AND id = (SELECT transfer_id FROM links WHERE id = ?)",
                    (link_id,),
                )
        return changed == 1

    def activate_earlier_links(self, link_id: str, at: datetime) -> list[str]:
        """Make active the links earlier attempts issued to the same recipient on the same
        transfer that were left pending, once `link_id` (this attempt's) is active; returns
        their ids. An attempt that died after the next hop's 250 and before recording it left
        its copy with the recipient and its link pending: the files are the same, so that
        copy's link opens too. Nothing changes unless `link_id` is active (so its transfer
        still holds its files: activate_link's compare-and-set decided that)."""
        with self.transaction():
            ids = [row[0] for row in self._query(
                "SELECT earlier.id FROM links AS earlier JOIN links AS this"
                " ON earlier.transfer_id = this.transfer_id AND earlier.recipient = this.recipient"
                " WHERE this.id = ? AND this.state = 'active' AND earlier.state = 'pending'"
                " AND earlier.id != this.id ORDER BY earlier.created_at, earlier.id",
                (link_id,),
            )]
            for earlier in ids:
                self._execute(
                    "UPDATE links SET state = 'active', activated_at = ? WHERE id = ?"
                    " AND state = 'pending'",
                    (to_text(at), earlier),
                )
        return ids

    def fail_links(self, link_ids: Iterable[str]) -> None:
        with self.transaction():
            for link_id in link_ids:
                self._execute("UPDATE links SET state = 'failed' WHERE id = ?", (link_id,))

    def claim_download(self, link_id: str) -> bool:
        """Count one download if the link is active and under its limit; False otherwise."""
        changed = self._write(
            "UPDATE links SET download_count = download_count + 1 WHERE id = ?"
            " AND state = 'active' AND (max_downloads = 0 OR download_count < max_downloads)",
            (link_id,),
        )
        return changed == 1

    def set_transfer_state(self, transfer_id: str, state: str) -> None:
        self._write("UPDATE transfers SET state = ? WHERE id = ?", (state, transfer_id))

    def record_delivery(
        self, fingerprint: str, recipient: str, at: datetime,
        transfer_id: str | None = None, link_id: str | None = None,
    ) -> None:
        """Remember that `recipient` got this message; recording it again keeps the first."""
        self._write(
            "INSERT INTO deliveries (fingerprint, recipient, transfer_id, link_id, delivered_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint, recipient) DO NOTHING",
            (fingerprint, recipient, transfer_id, link_id, to_text(at)),
        )

    def append_event(
        self, kind: str, at: datetime, transfer_id: str | None = None,
        link_id: str | None = None, recipient: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._write(
            "INSERT INTO events (at, kind, transfer_id, link_id, recipient, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (to_text(at), kind, transfer_id, link_id, recipient,
             json.dumps(detail or {}, ensure_ascii=False, sort_keys=True)),
        )

    def mark_purged(self, transfer_id: str, state: str = "purged") -> None:
        """Forget the files (and their wrapped keys) and password of a transfer, and end its
        active links ('expired'); keep the transfer row and its events (the retention's
        forget_ended_transfers and forget_events_before take them much later).

        `state` may be 'failed' instead, to keep the record of why the transfer ended.
        """
        if state not in ("purged", "failed"):
            raise ValueError(f"a purged transfer ends 'purged' or 'failed', not {state!r}")
        with self.transaction():
            self._execute("DELETE FROM files WHERE transfer_id = ?", (transfer_id,))
            self._execute("DELETE FROM extracted_files WHERE transfer_id = ?", (transfer_id,))
            self._execute(
                "UPDATE transfers SET state = ?, password_hash = NULL,"
                " password_sealed = NULL WHERE id = ?",
                (state, transfer_id),
            )
            # Its links lead nowhere now: listed and managed as expired, not active.
            self._execute(
                "UPDATE links SET state = 'expired' WHERE transfer_id = ? AND state = 'active'",
                (transfer_id,),
            )

    # -- retention (each call one bounded batch, one commit: the write lock is short) ---

    def forget_deliveries_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` delivery records made before `before`; returns how many."""
        return self._write(
            "DELETE FROM deliveries WHERE (fingerprint, recipient) IN (SELECT fingerprint,"
            " recipient FROM deliveries WHERE delivered_at < ? LIMIT ?)",
            (to_text(before), limit),
        )

    def forget_events_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` audit events from before `before`, oldest first. The horizon
        the file's trigger checks moves forward first, in the same commit (never back)."""
        with self.transaction():
            self._execute(
                "UPDATE audit_horizon SET forget_before = ? WHERE id = 1 AND forget_before < ?",
                (to_text(before), to_text(before)),
            )
            return self._execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?"
                " ORDER BY id LIMIT ?)",
                (to_text(before), limit),
            ).rowcount

    def forget_ended_transfers(self, expired_before: datetime, limit: int) -> int:
        """Delete up to `limit` transfers that ended (purged or failed, files gone, nothing
        left to send) and expired before `expired_before`, with their links, controls,
        unlock record, codes, password guards and finished outbox items. Their audit events
        are not touched: they go by their own age (forget_events_before)."""
        with self.transaction():
            ids = [row[0] for row in self._query(
                "SELECT id FROM transfers WHERE state IN ('purged', 'failed') AND expires_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM files WHERE files.transfer_id = transfers.id)"
                " AND NOT EXISTS (SELECT 1 FROM extracted_files"
                " WHERE extracted_files.transfer_id = transfers.id)"
                " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.transfer_id = transfers.id"
                " AND outbox.state = 'pending') ORDER BY expires_at LIMIT ?",
                (to_text(expired_before), limit),
            )]
            if not ids:
                return 0
            marks = ",".join("?" * len(ids))
            of_links = f"(SELECT id FROM links WHERE transfer_id IN ({marks}))"
            for statement in (
                f"DELETE FROM link_otp WHERE link_id IN {of_links}",
                f"DELETE FROM link_password_guard WHERE link_id IN {of_links}",
                f"DELETE FROM links WHERE transfer_id IN ({marks})",
                f"DELETE FROM transfer_controls WHERE transfer_id IN ({marks})",
                f"DELETE FROM unlocks WHERE transfer_id IN ({marks})",
                f"DELETE FROM outbox WHERE transfer_id IN ({marks})",
                f"DELETE FROM transfers WHERE id IN ({marks})",
            ):
                self._execute(statement, ids)
            return len(ids)

    # -- reads -----------------------------------------------------------------------

    def delivered_recipients(self, fingerprint: str) -> set[str]:
        rows = self._query(
            "SELECT recipient FROM deliveries WHERE fingerprint = ?", (fingerprint,)
        )
        return {row[0] for row in rows}

    def transfer(self, transfer_id: str) -> TransferRow | None:
        rows = self._query("SELECT * FROM transfers WHERE id = ?", (transfer_id,))
        return transfer_row(rows[0]) if rows else None

    def transfer_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Up to `limit` transfer ids that start with `prefix`, in order: a range of the
        primary key (ids are lowercase hex, compared byte by byte on both engines)."""
        rows = self._query(
            "SELECT id FROM transfers WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (prefix, prefix + "\uffff", limit),
        )
        return [row[0] for row in rows]

    def transfer_by_fingerprint(self, fingerprint: str) -> TransferRow | None:
        """The most recent transfer made from this message that did not fail."""
        rows = self._query(
            "SELECT * FROM transfers WHERE fingerprint = ? AND state != 'failed'"
            f" ORDER BY created_at DESC, {self._engine.dialect.row_order} DESC LIMIT 1",
            (fingerprint,),
        )
        return transfer_row(rows[0]) if rows else None

    def files_of(self, transfer_id: str) -> list[FileRow]:
        rows = self._query(
            "SELECT * FROM files WHERE transfer_id = ? ORDER BY position, id", (transfer_id,)
        )
        return [FileRow(**dict(row)) for row in rows]

    def links_of(self, transfer_id: str) -> list[LinkRow]:
        rows = self._query(
            "SELECT * FROM links WHERE transfer_id = ? ORDER BY created_at, id", (transfer_id,)
        )
        return [link_row(row) for row in rows]

    def link_by_token_hash(self, token_hash: str) -> LinkRow | None:
        rows = self._query("SELECT * FROM links WHERE token_hash = ?", (token_hash,))
        return link_row(rows[0]) if rows else None

    def events_since(self, since: datetime) -> Iterator[EventRow]:
        """The audit trail from `since` on, oldest first, read in pages (it can be long)."""
        last_id = 0
        while True:
            rows = self._query(
                "SELECT * FROM events WHERE at >= ? AND id > ? ORDER BY id LIMIT 1000",
                (to_text(since), last_id),
            )
            if not rows:
                return
            for row in rows:
                yield event_row(row)
            last_id = rows[-1]["id"]

    def transfers_since(self, since: datetime, sender: str | None = None) -> list[TransferRow]:
        if sender is None:
            rows = self._query(
                "SELECT * FROM transfers WHERE created_at >= ? ORDER BY created_at",
                (to_text(since),),
            )
        else:
            rows = self._query(
                "SELECT * FROM transfers WHERE created_at >= ? AND lower(sender) = lower(?)"
                " ORDER BY created_at",
                (to_text(since), sender),
            )
        return [transfer_row(row) for row in rows]

    def link(self, link_id: str) -> LinkRow | None:
        rows = self._query("SELECT * FROM links WHERE id = ?", (link_id,))
        return link_row(rows[0]) if rows else None

    def events(self, transfer_id: str | None = None) -> list[EventRow]:
        if transfer_id is None:
            rows = self._query("SELECT * FROM events ORDER BY id")
        else:
            rows = self._query(
                "SELECT * FROM events WHERE transfer_id = ? ORDER BY id", (transfer_id,)
            )
        return [event_row(row) for row in rows]

    def referenced_blob_ids(self) -> set[str]:
        """Every blob id a files row still points at (the rest on disk are orphans)."""
        return {
            row[0] for row in self._query(
                "SELECT blob_id FROM files UNION SELECT blob_id FROM extracted_files"
            )
        }

    def blob_ids_of(self, transfer_id: str) -> list[str]:
        """The blobs of a transfer: its attachments and whatever was extracted from them."""
        return [
            row[0] for row in self._query(
                "SELECT blob_id FROM files WHERE transfer_id = ?"
                " UNION ALL SELECT blob_id FROM extracted_files WHERE transfer_id = ?",
                (transfer_id, transfer_id),
            )
        ]

    def reusable(self, transfer_id: str, now: datetime) -> bool:
        """Whether a retry may still issue links on this transfer: it has its files and has not
        expired. Asked inside the transaction that issues them, so no purge comes in between
        (the transfer's row stays locked until it ends)."""
        rows = self._locked(
            "SELECT 1 FROM transfers WHERE id = ? AND state IN ('pending', 'active')"
            " AND expires_at > ?",
            (transfer_id, to_text(now)),
        )
        return bool(rows)

    def stale_pending_transfers(self, older_than: datetime) -> list[str]:
        """Transfers still 'pending' that were neither created nor given a link since
        `older_than` (a crash or a lost client mid-way, and no retry has come for them)."""
        rows = self._query(
            f"SELECT id FROM transfers WHERE {_STALE_PENDING} ORDER BY created_at",
            (to_text(older_than), to_text(older_than)),
        )
        return [row[0] for row in rows]

    def half_purged_transfers(self) -> list[str]:
        """Transfers claimed by a purge that did not get to forget their files (a crash)."""
        rows = self._query(
            "SELECT id FROM transfers WHERE state = 'purged' AND (id IN (SELECT transfer_id"
            " FROM files) OR id IN (SELECT transfer_id FROM extracted_files)) ORDER BY created_at"
        )
        return [row[0] for row in rows]

    def claim_for_purge(self, transfer_id: str, now: datetime,
                        stale_before: datetime) -> str | None:
        """Take a transfer out of use before its files are deleted, if it is still due: expired,
        or pending and stale (`stale_before`, see stale_pending_transfers). Returns the state it
        ends in ('purged', or 'failed' for a failed one, which nothing uses any more), or None
        when it is no longer due: a retry issued a link on it, or its sender extended it,
        since it was listed. One statement decides, so a link activation (activate_link) or a
        reuse (reusable) a moment later sees it gone."""
        with self.transaction():
            # Locked first: a retry issuing a link on it (reusable) ends before the check below,
            # which then sees that link.
            self._locked("SELECT id FROM transfers WHERE id = ?", (transfer_id,))
            cutoff = to_text(stale_before)
            claimed = self._execute(
                "UPDATE transfers SET state = 'purged' WHERE id = ? AND ("
                f"(state IN ('pending', 'active') AND expires_at <= ?) OR ({_STALE_PENDING}))",
                (transfer_id, to_text(now), cutoff, cutoff),
            ).rowcount
            if claimed:
                return "purged"
            rows = self._query("SELECT state FROM transfers WHERE id = ?", (transfer_id,))
        state = rows[0][0] if rows else None
        return state if state in ("purged", "failed") else None

    def failed_or_expired_transfers(self, now: datetime) -> list[str]:
        """Transfers whose files should go: failed ones, and unpurged ones past expiry."""
        rows = self._query(
            "SELECT id FROM transfers WHERE state = 'failed'"
            " OR (state IN ('pending', 'active') AND expires_at <= ?) ORDER BY created_at",
            (to_text(now),),
        )
        return [row[0] for row in rows]

    # -- download passwords (portal) ---------------------------------------------------

    def password_guard(self, link_id: str) -> PasswordGuardRow:
        rows = self._query(
            "SELECT failures, locked_until FROM link_password_guard WHERE link_id = ?", (link_id,)
        )
        if not rows:
            return PasswordGuardRow(link_id, 0, None)
        return PasswordGuardRow(link_id, rows[0][0], from_text(rows[0][1]))

    def reserve_password_attempt(self, link_id: str, now: datetime, max_attempts: int) -> bool:
        """Count one attempt before the password is checked; False if the link is locked or
        its attempts are all taken. Counting first bounds guesses made in parallel."""
        with self.transaction():
            self._lock_link(link_id)  # parallel attempts on the link count one after another
            guard = self.password_guard(link_id)
            failures = guard.failures
            if guard.locked_until is not None:
                if guard.locked_until > now:
                    return False
                failures = 0  # the lock-out is over: a fresh allowance
            if failures >= max_attempts:
                return False
            self._execute(
                "INSERT INTO link_password_guard (link_id, failures, locked_until)"
                " VALUES (?, ?, NULL) ON CONFLICT (link_id) DO UPDATE"
                " SET failures = excluded.failures, locked_until = NULL",
                (link_id, failures + 1),
            )
            return True

    def settle_password_attempt(
        self, link_id: str, correct: bool, now: datetime, max_attempts: int,
        lockout: timedelta,
    ) -> datetime | None:
        """After a reserved attempt: a correct password clears the count; a wrong one that
        used the last attempt locks the link. Returns the lock's end when this call locked it."""
        with self.transaction():
            self._lock_link(link_id)  # so only one of parallel wrong tries locks it
            if correct:
                self._execute("DELETE FROM link_password_guard WHERE link_id = ?", (link_id,))
                return None
            guard = self.password_guard(link_id)
            if guard.failures < max_attempts or guard.locked_until is not None:
                return None
            locked_until = now + lockout
            self._execute(
                "UPDATE link_password_guard SET locked_until = ? WHERE link_id = ?",
                (to_text(locked_until), link_id),
            )
            return locked_until
