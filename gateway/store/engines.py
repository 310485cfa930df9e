"""What differs between the metadata store's two engines, and nothing else: SQLite (one file, the
embedded default) and PostgreSQL (a server that several gateways share).

Each engine gives Database (store/db.py) the same few things: run one statement (`execute`,
`query`), `transaction()` nesting by savepoints, `run_script` for a migration and a lock that
makes migrating exclusive, the durability barrier, and its errors as MetadataError. The SQL is
shared: `?` placeholders everywhere (rewritten for psycopg), and the few phrases the dialects
spell differently are an engine's Dialect.

SQLite: one connection shared by every thread behind an RLock; a transaction is BEGIN IMMEDIATE,
which holds the whole database's write lock, so a read-then-write inside one is exclusive.
PostgreSQL: a psycopg pool; a transaction checks a connection out for the thread that runs it,
and statements outside one run in autocommit on a pooled connection. Rows are locked where a
transaction reads what it then writes (`for_update`); commits are durable when COMMIT returns
(synchronous_commit=on), so its barrier has nothing to wait for.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import PostgresUrl
from gateway.store.durability import (
    DurabilityBarrier,
    Sync,
    SyncedAtCommit,
    WalFile,
    deferred_commits,
)

_DISK_FULL_SQLSTATE = "53100"  # PostgreSQL's disk_full
# Advisory locks are (classid, objid): 'PPAP', and an objid per purpose. 1: whoever applies
# migrations; 2: migrate-store's copy (store/copying.py); RUN_LOCKS: the runs one node at a time
# makes (exclusive_run); from 2^30 up: the keys a transaction locks (lock_key).
_PPAP = 0x50504150
_MIGRATION_LOCK = (_PPAP, 1)
RUN_LOCKS = {"housekeeping": 3}
KEY_LOCKS_FROM = 1 << 30


@dataclass(frozen=True)
class Dialect:
    """The phrases the two engines spell differently, for SQL shared by both."""

    name: str
    # Appended to a SELECT whose rows the transaction then changes: locked until it ends.
    for_update: str
    # A join the planner must take in the order written.
    ordered_join: str
    # Ties broken in the order rows were inserted in (where the engine knows it).
    row_order: str
    # Appended to a SELECT of rows to claim: locked, and those another transaction holds
    # passed over (a queue read by several nodes at once).
    skip_locked: str


SQLITE = Dialect(
    "sqlite",
    for_update="",  # BEGIN IMMEDIATE already holds the whole database's write lock
    ordered_join="CROSS JOIN",  # SQLite's way to keep the order written
    row_order="rowid",
    skip_locked="",  # BEGIN IMMEDIATE: no other writer, nothing to pass over
)
POSTGRESQL = Dialect(
    "postgresql",
    # What SQLite's database-wide write lock gave for free: rows read, then changed.
    for_update=" FOR UPDATE",
    ordered_join="JOIN",
    row_order="id",  # no insertion order: ties go the same way every time, by id
    skip_locked=" FOR UPDATE SKIP LOCKED",
)


class MetadataError(Exception):
    """The metadata store failed; the message cannot be accepted right now."""


class DatabaseUnreachable(MetadataError):
    """The PostgreSQL server named by storage.database cannot be reached (at start-up)."""


# -- error classification (replies.py) ----------------------------------------------------


def is_disk_full(error: BaseException) -> bool:
    """An engine's own "no space" error (each engine's failure is also wrapped as ENOSPC)."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return (isinstance(error, _psycopg_errors())
            and getattr(error, "sqlstate", None) == _DISK_FULL_SQLSTATE)


def is_engine_error(error: BaseException) -> bool:
    """An error raised by either engine's driver (not yet wrapped as MetadataError)."""
    return isinstance(error, (sqlite3.Error, *_psycopg_errors()))


def _psycopg_errors() -> tuple[type[BaseException], ...]:
    # Only once psycopg is loaded can an error be one of its own: SQLite-only processes never
    # import it.
    psycopg = sys.modules.get("psycopg")
    return (psycopg.Error,) if psycopg is not None else ()


# -- SQLite ---------------------------------------------------------------------------------


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements; a ';' in a trigger body, string or comment does not split."""
    pieces = script.split(";")
    pending = ""
    for piece in pieces[:-1]:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    rest = pending + pieces[-1]
    if rest.strip():
        yield rest  # a last statement without ';', or just comments: SQLite judges it


def _sqlite_failure(exc: sqlite3.Error) -> MetadataError:
    return MetadataError(f"database error: {exc}")


def _sqlite_cause(exc: sqlite3.Error) -> BaseException:
    """A full disk is told by its errno, like a failed blob write, so the reply is 452 4.3.1."""
    if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL:
        return OSError(errno.ENOSPC, f"database or disk is full ({exc})")
    return exc


class SqliteEngine:
    """One file, one connection shared by all threads and guarded by an RLock; a transaction()
    holds the lock until it ends.

    Every commit is on disk when transaction() returns, as with `synchronous=FULL`, except
    inside store.durability.deferring_commits() (the relay): there it waits for the barrier's
    next flush (group commit). `group_commit=False` runs at `synchronous=FULL` instead. `fsync`
    syncs the -wal file (tests count or hold it)."""

    dialect = SQLITE

    def __init__(self, path: Path, *, busy_timeout_ms: int, group_commit: bool, fsync: Sync):
        self.location = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        self._group_commit = group_commit
        self.connection = self._connect(path, busy_timeout_ms, "NORMAL" if group_commit else "FULL")
        # SQLite names the WAL after the database's real path (symbolic links resolved).
        self._wal = WalFile(Path(os.path.realpath(path) + "-wal"), fsync)
        self.barrier: DurabilityBarrier | SyncedAtCommit = (
            DurabilityBarrier(self._wal.sync) if group_commit else SyncedAtCommit()
        )

    @staticmethod
    def _connect(path: Path, busy_timeout_ms: int, synchronous: str) -> sqlite3.Connection:
        try:
            # Create the file 0600 ourselves; SQLite gives -wal and -shm the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            conn = sqlite3.connect(
                path, timeout=busy_timeout_ms / 1000, isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise MetadataError(f"{path}: cannot open database: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise MetadataError(f"{path}: database refuses WAL mode (got {mode})")
            # NORMAL: a commit is in the WAL (safe if the process dies) and is synced after
            # it (_synced) or by the barrier; SQLite itself syncs at checkpoints.
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            # Overwrite deleted rows, so purged wrapped keys do not linger in free pages.
            conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
            conn.close()
            raise MetadataError(f"{path}: cannot configure database: {exc}") from exc
        except MetadataError:
            conn.close()
            raise
        return conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self.connection.execute(sql, tuple(params))
            except sqlite3.Error as exc:
                raise _sqlite_failure(exc) from _sqlite_cause(exc)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self.connection.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise _sqlite_failure(exc) from _sqlite_cause(exc)

    def write(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One statement in (or as) a transaction; the rows it changed."""
        with self.transaction():
            return self.execute(sql, params).rowcount

    def write_returning(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """One statement with RETURNING in (or as) a transaction; the rows it returned."""
        with self.transaction():
            return self.query(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK if the block raises. Nests via savepoints."""
        with self._lock:
            outer = self._depth == 0
            savepoint = f"nested_{self._depth}"
            self.execute("BEGIN IMMEDIATE" if outer else f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                try:
                    yield
                finally:
                    self._depth -= 1
                self.execute("COMMIT" if outer else f"RELEASE {savepoint}")
            except BaseException:
                self._undo(outer, savepoint)
                raise
        if outer:
            self._synced()  # outside the lock: other threads may read and write meanwhile

    def _undo(self, outer: bool, savepoint: str) -> None:
        try:
            if outer:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
            else:
                self.connection.execute(f"ROLLBACK TO {savepoint}")
                self.connection.execute(f"RELEASE {savepoint}")
        except sqlite3.Error:
            pass  # the original error is the one worth reporting

    def _synced(self) -> None:
        """A commit just ended: sync it now, or leave it to the flush of the work deferring it."""
        if not self._group_commit:
            return  # synchronous=FULL: SQLite synced the WAL in COMMIT
        deferred = deferred_commits()
        if deferred is not None:
            deferred.last = self.barrier.mark()
            return
        try:
            self.barrier.sync_now()
        except OSError as exc:
            raise MetadataError(
                f"{self.location}: committed, but cannot sync the WAL: {exc}") from exc

    async def synced(self) -> None:
        try:
            await self.barrier.flush(self.barrier.mark())
        except OSError as exc:
            raise MetadataError(f"{self.location}: cannot sync the WAL: {exc}") from exc

    def lock_for_migration(self) -> None:
        """Nothing to do: the migration's BEGIN IMMEDIATE already excludes other processes."""

    def lock_key(self, objid: int) -> None:
        """Nothing to do: a transaction's BEGIN IMMEDIATE already excludes other writers."""

    @contextmanager
    def exclusive_run(self, objid: int) -> Iterator[bool]:
        """Always ours: one machine uses the file, and on it only the leading worker of the
        gateway that holds the data directory's lock runs the timers (app.py)."""
        yield True

    def run_script(self, script: str) -> None:
        for statement in _statements(script):
            self.execute(statement)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (after purges, so old pages go)."""
        self.query("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.barrier.close()
        with self._lock:
            self.connection.close()
        self._wal.close()


# -- PostgreSQL -----------------------------------------------------------------------------


class Row:
    """A result row read by position or by column name, as sqlite3.Row is (dict(row) works)."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


def _rows(cursor: Any) -> Any:
    """psycopg row factory making Row objects."""
    names = [column.name for column in cursor.description or ()]
    index = {name: position for position, name in enumerate(names)}
    return lambda values: Row(values, index)


@functools.lru_cache(maxsize=1024)
def _pyformat(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (and a literal `%` as `%%`); a `?` inside a quoted
    string or name stays."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if char == "%":
            out.append("%%")
        elif quote is not None:
            out.append(char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


@dataclass
class Result:
    """What one statement did, read off before its pooled connection goes back."""

    rowcount: int
    rows: list[Row]

    def fetchall(self) -> list[Row]:
        return self.rows

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None


def _pg_failure(exc: BaseException) -> MetadataError:
    # The server's own message, without the CONTEXT and HINT lines psycopg adds.
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    text = " ".join((primary or str(exc)).split()) or type(exc).__name__
    return MetadataError(f"database error: {text}")


def _pg_cause(exc: BaseException) -> BaseException:
    if getattr(exc, "sqlstate", None) == _DISK_FULL_SQLSTATE:
        return OSError(errno.ENOSPC, f"database server's disk is full ({exc})")
    return exc


def _configure(connection: Any, *, lock_timeout_ms: int) -> None:
    """Per connection, whatever the server's or role's defaults: a commit is durable when it
    returns, and a row lock is waited for as long as SQLite waits for its write lock."""
    connection.execute("SET synchronous_commit = on")
    connection.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")


class PostgresEngine:
    """A pool of psycopg connections; each thread's transaction() holds one until it ends."""

    dialect = POSTGRESQL

    def __init__(self, url: PostgresUrl, *, timeout: float, pool_size: int):
        import psycopg
        import psycopg_pool

        self.location = str(url)
        self.barrier = SyncedAtCommit()  # synchronous_commit=on: COMMIT returns once durable
        self._error = psycopg.Error
        self._url = url.url
        self._connect = psycopg.connect
        self._connect_options = connect_options = {"autocommit": True, "row_factory": _rows,
                           "connect_timeout": max(1, round(timeout)),
                           "application_name": "ppap-gateway"}
        try:
            # A first connection of our own: its error says why; the pool's would not.
            psycopg.connect(url.url, **connect_options).close()
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise DatabaseUnreachable(f"{self.location}: cannot connect: {reason}") from None
        self._pool = psycopg_pool.ConnectionPool(
            url.url, kwargs=connect_options, min_size=1,
            configure=functools.partial(_configure, lock_timeout_ms=round(timeout * 1000)),
            max_size=pool_size, timeout=timeout, open=False, name="ppap-gateway",
            # A connection the server dropped (restart, fail-over) is replaced, not handed out.
            check=psycopg_pool.ConnectionPool.check_connection,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise DatabaseUnreachable(f"{self.location}: cannot open a pool: {exc}") from None
        self._held = threading.local()  # the connection of this thread's transaction, if any

    def _checkout(self) -> Any:
        try:
            return self._pool.getconn()
        except self._error as exc:
            raise _pg_failure(exc) from exc

    def _run(self, connection: Any, sql: str, params: Iterable[Any]) -> Result:
        values = tuple(params)
        try:
            # Without parameters the text goes as written (a migration: many statements).
            cursor = connection.execute(_pyformat(sql) if values else sql, values or None)
            rows = cursor.fetchall() if cursor.description else []
            return Result(cursor.rowcount, rows)
        except self._error as exc:
            raise _pg_failure(exc) from _pg_cause(exc)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Result:
        held = getattr(self._held, "connection", None)
        if held is not None:
            return self._run(held, sql, params)
        connection = self._checkout()
        try:
            return self._run(connection, sql, params)
        finally:
            self._pool.putconn(connection)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return self.execute(sql, params).rows

    def write(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One statement, the rows it changed. Alone it is its own transaction (autocommit,
        durable when it returns); inside one it needs no savepoint of its own: should it fail,
        the error ends the enclosing transaction, which the caller rolls back (a round trip
        each for SAVEPOINT and RELEASE, saved on every write)."""
        return self.execute(sql, params).rowcount

    def write_returning(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        """One statement with RETURNING, as write(); the rows it returned."""
        return self.execute(sql, params).rows

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN … COMMIT on a connection of this thread's own, or ROLLBACK if the block
        raises. Nests via savepoints."""
        held = getattr(self._held, "connection", None)
        if held is not None:
            yield from self._nested(held)
            return
        connection = self._checkout()
        self._held.connection, self._held.depth = connection, 1
        try:
            self._run(connection, "BEGIN", ())
            yield
            self._run(connection, "COMMIT", ())
        except BaseException:
            self._quietly(connection, "ROLLBACK")
            raise
        finally:
            self._held.connection, self._held.depth = None, 0
            self._pool.putconn(connection)  # a broken one is discarded by the pool

    def _nested(self, connection: Any) -> Iterator[None]:
        savepoint = f"nested_{self._held.depth}"
        self._run(connection, f"SAVEPOINT {savepoint}", ())
        self._held.depth += 1
        try:
            try:
                yield
            finally:
                self._held.depth -= 1
            self._run(connection, f"RELEASE {savepoint}", ())
        except BaseException:
            self._quietly(connection, f"ROLLBACK TO {savepoint}")
            self._quietly(connection, f"RELEASE {savepoint}")
            raise

    def _quietly(self, connection: Any, sql: str) -> None:
        try:
            if not connection.closed:
                connection.execute(sql)
        except self._error:
            pass  # the original error is the one worth reporting

    async def synced(self) -> None:
        return None  # every commit was durable when it returned

    def lock_for_migration(self) -> None:
        """Inside the migration's transaction: another process starting at the same moment
        waits here, then finds the migration applied."""
        self.execute("SELECT pg_advisory_xact_lock(?, ?)", _MIGRATION_LOCK)

    def lock_key(self, objid: int) -> None:
        """Inside a transaction: another one locking the same objid waits until it ends."""
        self.execute("SELECT pg_advisory_xact_lock(?, ?)", (_PPAP, objid))

    @contextmanager
    def exclusive_run(self, objid: int) -> Iterator[bool]:
        """Whether this process got the run's lock (no one else on any node holds it), held
        until the block ends. A session lock on a connection of its own, out of the pool: the
        run's own statements commit as they go, and should this process die the server ends
        the session and the lock with it."""
        try:
            connection = self._connect(self._url, **self._connect_options)
        except self._error as exc:
            raise _pg_failure(exc) from exc
        try:
            got = self._run(connection, "SELECT pg_try_advisory_lock(?, ?)", (_PPAP, objid))
            yield bool(got.rows[0][0])
        finally:
            connection.close()  # ends the session: the lock goes with it

    def run_script(self, script: str) -> None:
        self.execute(script)

    def checkpoint(self) -> None:
        """Nothing to do: the server checkpoints its WAL itself (see docs/postgresql.md on
        what that means for purged keys)."""

    def close(self) -> None:
        self._pool.close()


def open_engine(
    location: Path | PostgresUrl, *, busy_timeout_ms: int, group_commit: bool, fsync: Sync,
    pool_size: int,
) -> SqliteEngine | PostgresEngine:
    if isinstance(location, PostgresUrl):
        return PostgresEngine(location, timeout=busy_timeout_ms / 1000, pool_size=pool_size)
    return SqliteEngine(location, busy_timeout_ms=busy_timeout_ms, group_commit=group_commit,
                        fsync=fsync)
