"""Keep sealed blobs in PostgreSQL, as rows of a fixed size, so the nodes of a cluster share
files through the database alone (tables of migration 0009_blob_chunks.sql).

A blob is a `blobs` row and its `blob_chunks` rows: row `seq` holds sealed bytes
[seq × row_size, (seq + 1) × row_size), the last row fewer; `row_size` is kept per blob, so a
different setting later leaves old blobs readable. A reader asks for an offset range and gets
only the rows it covers, and only the bytes of them it asked for (`substring` on the server: the
column is stored uncompressed, sealed bytes do not compress, so PostgreSQL reads only the TOAST
pieces of that range).

Visibility: the `blobs` row is inserted first with `committed_at` NULL, and only a row with
`committed_at` set is ever read; the upload's last transaction writes the last chunk rows and
sets `committed_at`, and its COMMIT is the rename of the directory backend. The chunks before
it are committed in batches of `rows_per_commit` rows rather than in one transaction held open
for the whole blob: a transaction open for as long as a large file streams in holds back
vacuum on every table of a busy database, and a writer that dies leaves batches the sweep can
see (`unfinished`, by `started_at`) and remove, as it removes a directory's temp files. A small
blob still costs one transaction, hence one WAL flush.

Durability: each connection sets `synchronous_commit = on` (as the metadata engine does,
store/engines.py), so a COMMIT returns once the server's WAL is flushed whatever its defaults.

Connections come from the backend's own small pool (psycopg 3, sync: BlobStore is called from
worker threads), in autocommit; an upload holds one connection until it commits or is
abandoned; a reader takes one per read, so a slow download never holds a connection.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from gateway.store.blob_backends import (
    BlobMissingError,
    StorageError,
    StoredBlob,
    check_blob_id,
)
from gateway.store.blob_backends.positioned import PositionedReader
from gateway.store.rows import from_text, to_text

ROW_SIZE = 64 * 1024  # about one sealed chunk at the default chunk size
ROWS_PER_COMMIT = 16  # a large blob commits a MiB at a time
MAX_ROWS_PER_READ = 16  # one read returns at most a MiB (a short read, as a raw file may)
READ_AHEAD = 8 * ROW_SIZE  # what a sequential reader fetches at once

T = TypeVar("T")

# The part of each row inside [start, stop), offsets counted in the whole blob.
_READ_RANGE = """
SELECT substring(data
                 FROM (greatest(%(start)s::bigint - seq * %(row)s::bigint, 0) + 1)::integer
                 FOR (%(stop)s::bigint - greatest(%(start)s::bigint, seq * %(row)s::bigint))::integer)
FROM blob_chunks
WHERE blob_id = %(blob_id)s AND seq BETWEEN %(first)s AND %(last)s
ORDER BY seq
"""


def _now_text() -> str:
    return to_text(datetime.now(timezone.utc))


def _epoch(text: str) -> float:
    moment = from_text(text)
    assert moment is not None
    return moment.timestamp()


def _durable_commits(connection: psycopg.Connection) -> None:
    # Whatever the server's or the role's default: a COMMIT returns once its WAL is flushed.
    connection.execute("SET synchronous_commit = on")


def _autocommit(connection: psycopg.Connection) -> None:
    connection.autocommit = True  # what an upload turned off, for the next user of the pool


class PostgresChunkBackend:
    def __init__(
        self,
        dsn: str,
        *,
        row_size: int = ROW_SIZE,
        rows_per_commit: int = ROWS_PER_COMMIT,
        pool_size: int = 4,
        timeout: float = 10.0,
    ):
        """Connects at once: a wrong DSN or an unreachable server is a StorageError here.
        `timeout`: how long to wait for the server now, and later for a free connection."""
        if row_size < 1 or rows_per_commit < 1:
            raise ValueError("row_size and rows_per_commit must be positive")
        self._row_size = row_size
        self._rows_per_commit = rows_per_commit
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, name="blobs",
            kwargs={"autocommit": True, "application_name": "ppap-gateway blobs"},
            configure=_durable_commits, reset=_autocommit, timeout=timeout,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise StorageError(f"cannot connect to the blob database: {exc}") from exc

    def begin(self, blob_id: str) -> _RowsUpload:
        check_blob_id(blob_id)
        for attempt in (1, 2):
            try:
                connection = self._pool.getconn()
            except psycopg.Error as exc:
                raise StorageError(f"cannot store blob {blob_id}: {exc}") from exc
            try:
                return _RowsUpload(self._pool, connection, blob_id, self._row_size,
                                   self._rows_per_commit)
            except StorageError:
                if attempt == 1 and connection.broken:
                    self._pool.check()  # pooled before the server restarted, as the others
                    continue  # nothing was written
                raise
        raise AssertionError("unreachable")

    def open(self, blob_id: str, *, sequential: bool = False) -> BinaryIO:
        check_blob_id(blob_id)
        found = self._run(lambda db: db.execute(
            "SELECT size, row_size FROM blobs WHERE blob_id = %s AND committed_at IS NOT NULL",
            (blob_id,)).fetchone())
        if found is None:
            raise BlobMissingError(f"blob {blob_id} does not exist")
        size, row_size = found
        rows = _ChunkRowsFile(self._run, blob_id, size, row_size)
        # A stream (a download) reads a chunk at a time: a query per chunk would cost it 3×.
        return io.BufferedReader(rows, READ_AHEAD) if sequential else rows

    def exists(self, blob_id: str) -> bool:
        check_blob_id(blob_id)
        return self._run(lambda db: db.execute(
            "SELECT 1 FROM blobs WHERE blob_id = %s AND committed_at IS NOT NULL",
            (blob_id,)).fetchone()) is not None

    def delete(self, blob_id: str) -> int:
        check_blob_id(blob_id)
        gone = self._run(lambda db: db.execute(  # its chunk rows go with it (ON DELETE CASCADE)
            "DELETE FROM blobs WHERE blob_id = %s AND committed_at IS NOT NULL RETURNING size",
            (blob_id,)).fetchone())
        return 0 if gone is None else gone[0]

    def stored(self) -> Iterator[StoredBlob]:
        rows = self._run(lambda db: db.execute(
            "SELECT blob_id, size, committed_at FROM blobs WHERE committed_at IS NOT NULL"
        ).fetchall())
        return (StoredBlob(blob_id, size, _epoch(at)) for blob_id, size, at in rows)

    def unfinished(self) -> Iterator[StoredBlob]:
        rows = self._run(lambda db: db.execute(
            "SELECT b.blob_id, coalesce(sum(length(c.data)), 0), b.started_at"
            " FROM blobs b LEFT JOIN blob_chunks c ON c.blob_id = b.blob_id"
            " WHERE b.committed_at IS NULL GROUP BY b.blob_id, b.started_at"
        ).fetchall())
        return (StoredBlob(blob_id, int(size), _epoch(at)) for blob_id, size, at in rows)

    def discard_unfinished(self, name: str) -> int:
        check_blob_id(name)

        def discard(db: psycopg.Connection) -> int:
            with db.transaction():
                size = db.execute(
                    "SELECT coalesce(sum(length(data)), 0) FROM blob_chunks WHERE blob_id = %s",
                    (name,)).fetchone()[0]
                gone = db.execute(  # not if its writer committed it since it was listed
                    "DELETE FROM blobs WHERE blob_id = %s AND committed_at IS NULL", (name,))
                return int(size) if gone.rowcount else 0

        return self._run(discard)

    def bytes_stored(self) -> int:
        total = self._run(lambda db: db.execute(
            "SELECT coalesce(sum(length(data)), 0) FROM blob_chunks").fetchone()[0])
        return int(total)

    def close(self) -> None:
        self._pool.close()

    def _run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """`work` on a pooled connection; once more on a fresh one if that connection was dead
        (the server restarted since it was pooled: then the pool's idle connections are checked
        and the dead ones dropped). Every `work` here may run twice."""
        for attempt in (1, 2):
            try:
                with self._pool.connection() as connection:
                    try:
                        return work(connection)
                    except psycopg.OperationalError:
                        if attempt == 1 and connection.broken:
                            self._pool.check()  # the others pooled with it are dead too
                            continue  # and the pool drops this one
                        raise
            except psycopg.Error as exc:
                raise StorageError(f"blob database: {exc}") from exc
        raise AssertionError("unreachable")


class _RowsUpload:
    """One blob's rows, cut to row_size from what is written, a batch of them per commit."""

    def __init__(
        self, pool: ConnectionPool, connection: psycopg.Connection, blob_id: str,
        row_size: int, rows_per_commit: int,
    ):
        self._pool = pool
        self._connection: psycopg.Connection | None = connection
        self._blob_id = blob_id
        self._row_size = row_size
        self._rows_per_commit = rows_per_commit
        self._pending = bytearray()
        self._rows = 0
        self._size = 0
        try:
            connection.autocommit = False
            self._execute(
                "INSERT INTO blobs (blob_id, row_size, started_at) VALUES (%s, %s, %s)",
                (blob_id, row_size, _now_text()))
        except BaseException:
            self.abandon()
            raise

    def write(self, sealed: bytes) -> None:
        self._pending += sealed
        while len(self._pending) >= self._row_size:
            self._insert_row(bytes(self._pending[:self._row_size]))
            del self._pending[:self._row_size]

    def commit(self) -> None:
        if self._pending:
            self._insert_row(bytes(self._pending))
            self._pending.clear()
        committed = self._execute(
            "UPDATE blobs SET size = %s, committed_at = %s"
            " WHERE blob_id = %s AND committed_at IS NULL",
            (self._size, _now_text(), self._blob_id))
        if committed.rowcount != 1:  # the sweep took it as abandoned: an upload of hours
            raise StorageError(f"blob {self._blob_id} was discarded while it was written")
        self._commit()
        self._release()

    def abandon(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            connection.rollback()
            with connection.transaction():  # the batches committed so far
                connection.execute("DELETE FROM blobs WHERE blob_id = %s", (self._blob_id,))
        except psycopg.Error:
            pass  # left for the sweep, listed by unfinished()
        self._release()

    def _insert_row(self, data: bytes) -> None:
        self._execute(
            "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (%s, %s, %b)",
            (self._blob_id, self._rows, data))
        self._rows += 1
        self._size += len(data)
        if self._rows % self._rows_per_commit == 0:
            self._commit()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> psycopg.Cursor:
        if self._connection is None:
            raise StorageError(f"blob {self._blob_id}: the upload is over")
        try:
            return self._connection.execute(sql, params)
        except psycopg.Error as exc:
            raise StorageError(f"cannot store blob {self._blob_id}: {exc}") from exc

    def _commit(self) -> None:
        assert self._connection is not None
        try:
            self._connection.commit()
        except psycopg.Error as exc:
            raise StorageError(f"cannot store blob {self._blob_id}: {exc}") from exc

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.putconn(connection)


class _ChunkRowsFile(PositionedReader):
    """A committed blob's sealed bytes as a read-only file; each read is one query for the
    rows it covers, on a connection taken for that query only (unbuffered: `open` buffers
    streams)."""

    def __init__(self, run: Callable[[Callable[[psycopg.Connection], Any]], Any], blob_id: str,
                 size: int, row_size: int):
        super().__init__()
        self._run = run
        self._blob_id = blob_id
        self._length = size
        self._row_size = row_size

    def _size(self) -> int:
        return self._length

    def _read_at(self, start: int, size: int) -> list[bytes]:
        """One query: the pieces of up to `size` bytes (all that is left if negative) from
        `start` on, one per row, at most MAX_ROWS_PER_READ rows' worth."""
        limit = MAX_ROWS_PER_READ * self._row_size
        stop = min(self._length, start + (limit if size < 0 else min(size, limit)))
        if stop <= start:
            return []
        rows = self._run(lambda db: db.cursor(binary=True).execute(_READ_RANGE, {
            "blob_id": self._blob_id, "start": start, "stop": stop, "row": self._row_size,
            "first": start // self._row_size, "last": (stop - 1) // self._row_size,
        }).fetchall())
        pieces = [piece for (piece,) in rows]
        if sum(map(len, pieces)) != stop - start:
            raise BlobMissingError(f"blob {self._blob_id} went while it was being read")
        return pieces
