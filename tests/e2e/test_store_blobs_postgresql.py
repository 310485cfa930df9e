"""BlobStore on PostgreSQL chunk rows (a private server, tests/support/postgres.py): the
behaviour every backend shares (tests/support/blob_contract.py), then what the database adds:
a blob is seen only once committed, by every node at once; a read fetches only the rows of its
range; a delete frees its rows; the purge sweeps orphans and writes a crash left unfinished.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from gateway.config import PostgresUrl
from gateway.ops.housekeeping import PurgeReport, purge
from gateway.store.blob_backends import BlobMissingError, StorageError
from gateway.store.blob_backends.postgres import ROW_SIZE, PostgresChunkBackend
from gateway.store.blobs import BlobStore
from gateway.store.db import Database
from gateway.store.rows import to_text
from tests.support.blob_contract import CHUNK, MASTER, BlobStoreContract, NewStore, read_all

NOW = datetime.now(timezone.utc)
HOUR = timedelta(hours=1)

OpenBackend = Callable[..., PostgresChunkBackend]


@pytest.fixture
def blob_dsn(postgres_dsn: str) -> str:
    Database(PostgresUrl(postgres_dsn)).close()  # every migration, 0009's tables among them
    return postgres_dsn


@pytest.fixture
def backends(blob_dsn: str) -> Iterator[OpenBackend]:
    """Factory: one more backend on the same database, its own pool (one more "node")."""
    opened: list[PostgresChunkBackend] = []

    def open_backend(**options: int) -> PostgresChunkBackend:
        opened.append(PostgresChunkBackend(blob_dsn, **options))
        return opened[-1]

    yield open_backend
    for backend in opened:
        backend.close()


@pytest.fixture
def new_store(backends: OpenBackend) -> NewStore:
    return lambda chunk_size: BlobStore(backends(), MASTER, chunk_size=chunk_size)


class RowsAtRest:
    """The sealed bytes as the database holds them, read and changed with plain SQL."""

    def __init__(self, dsn: str):
        self._dsn = dsn

    def sealed(self, blob_id: str) -> bytes:
        return b"".join(data for (data,) in self._query(
            "SELECT data FROM blob_chunks WHERE blob_id = %s ORDER BY seq", (blob_id,)))

    def replace(self, blob_id: str, sealed: bytes) -> None:
        with psycopg.connect(self._dsn) as db, db.transaction():
            (row_size,) = db.execute(
                "SELECT row_size FROM blobs WHERE blob_id = %s", (blob_id,)).fetchone()
            db.execute("DELETE FROM blob_chunks WHERE blob_id = %s", (blob_id,))
            for seq, offset in enumerate(range(0, len(sealed), row_size)):
                db.execute("INSERT INTO blob_chunks (blob_id, seq, data) VALUES (%s, %s, %b)",
                           (blob_id, seq, sealed[offset:offset + row_size]))
            db.execute("UPDATE blobs SET size = %s WHERE blob_id = %s", (len(sealed), blob_id))

    def everything(self) -> list[str]:
        return [name for (name,) in self._query(
            "SELECT 'blobs ' || blob_id FROM blobs"
            " UNION ALL SELECT DISTINCT 'blob_chunks ' || blob_id FROM blob_chunks")]

    def execute(self, sql: str, params: tuple = ()) -> None:
        with psycopg.connect(self._dsn) as db:
            db.execute(sql, params)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self._dsn) as db:
            return db.execute(sql, params).fetchall()


@pytest.fixture
def at_rest(blob_dsn: str) -> RowsAtRest:
    return RowsAtRest(blob_dsn)


class TestOnPostgresqlChunks(BlobStoreContract):
    pass


def test_a_blob_written_but_not_committed_is_invisible_and_listed_as_unfinished(
    backends: OpenBackend,
) -> None:
    writer, other = backends(rows_per_commit=4), backends()
    blob_id = secrets.token_hex(16)
    upload = writer.begin(blob_id)
    upload.write(os.urandom(8 * ROW_SIZE))  # two batches of four rows, each committed
    assert not other.exists(blob_id)
    with pytest.raises(BlobMissingError):
        other.open(blob_id)
    assert [blob.name for blob in other.stored()] == []
    [unfinished] = other.unfinished()
    assert (unfinished.name, unfinished.size) == (blob_id, 8 * ROW_SIZE)
    assert time.time() - 60 < unfinished.modified <= time.time()
    # The sweep of another node takes it (it would wait for an hour's grace): the writer's
    # commit then fails rather than publish a blob the sweep has emptied.
    assert other.discard_unfinished(blob_id) == 8 * ROW_SIZE
    with pytest.raises(StorageError, match="discarded"):
        upload.commit()
    upload.abandon()
    assert list(other.unfinished()) == [] and not other.exists(blob_id)


def test_a_failing_source_after_committed_batches_leaves_no_rows(
    backends: OpenBackend, at_rest: RowsAtRest,
) -> None:
    store = BlobStore(backends(rows_per_commit=2), MASTER)

    def source() -> Iterator[bytes]:
        yield os.urandom(1024 * 1024)  # 16 rows: eight batches committed
        raise ValueError("upstream broke")

    with pytest.raises(ValueError, match="upstream broke"):
        store.write(source())
    assert at_rest.everything() == []


def rows_holding(start: int, stop: int, row_size: int = ROW_SIZE) -> set[int]:
    return set(range(start // row_size, (stop - 1) // row_size + 1))


def test_random_access_to_the_middle_of_a_3_mb_blob_reads_only_the_rows_it_needs(
    backends: OpenBackend, at_rest: RowsAtRest,
) -> None:
    store = BlobStore(backends(), MASTER)  # 64 KiB chunks, sealed 64 KiB + 16 behind a header
    data = os.urandom(3 * 1024 * 1024)
    info = store.write([data])
    start, stop = 1_500_000, 1_600_000
    header, sealed_chunk, chunk = 16, 64 * 1024 + 16, 64 * 1024
    needed = rows_holding(0, header)  # the header, read when the view opens
    for index in range(start // chunk, (stop - 1) // chunk + 1):
        needed |= rows_holding(header + index * sealed_chunk, header + (index + 1) * sealed_chunk)
    assert len(needed) < 8  # of 49 rows
    # Every other row goes: a read that touched one would find the blob gone.
    at_rest.execute("DELETE FROM blob_chunks WHERE blob_id = %s AND NOT seq = ANY(%s)",
                    (info.blob_id, sorted(needed)))
    with store.view(info.blob_id, info.wrapped_key) as view:
        assert view[start:stop] == data[start:stop]
        assert view.find(data[1_550_000:1_550_100], start, stop) == 1_550_000
        with pytest.raises(BlobMissingError):
            view[:10]  # the first chunk's rows are gone, as the test meant


def test_two_nodes_see_each_others_committed_blobs_at_once(backends: OpenBackend) -> None:
    node_a = BlobStore(backends(), MASTER, chunk_size=CHUNK)
    node_b = BlobStore(backends(), MASTER, chunk_size=CHUNK)
    data = os.urandom(10 * CHUNK + 3)
    info = node_a.write([data])
    assert node_b.exists(info.blob_id)
    assert read_all(node_b.open(info.blob_id, info.wrapped_key)) == data
    assert list(node_b.iter_blob_ids()) == [info.blob_id]
    assert node_b.delete(info.blob_id) > len(data)
    assert not node_a.exists(info.blob_id)
    with pytest.raises(BlobMissingError):
        node_a.open(info.blob_id, info.wrapped_key)


def test_delete_frees_the_blobs_rows(backends: OpenBackend, at_rest: RowsAtRest) -> None:
    backend = backends()
    store = BlobStore(backend, MASTER, chunk_size=CHUNK)
    kept = store.write([b"another file"])
    info = store.write([os.urandom(300 * 1024)])
    sealed = len(at_rest.sealed(info.blob_id))
    before = backend.bytes_stored()
    assert store.delete(info.blob_id) == sealed
    assert at_rest.everything() == [f"blobs {kept.blob_id}", f"blob_chunks {kept.blob_id}"]
    assert backend.bytes_stored() == before - sealed


def test_the_purge_sweeps_old_orphans_and_unfinished_writes_from_the_database(
    blob_dsn: str, backends: OpenBackend, at_rest: RowsAtRest,
) -> None:
    """Metadata and blobs in one PostgreSQL database, as a cluster keeps them."""
    store = BlobStore(backends(), MASTER, chunk_size=CHUNK)
    old_orphan = store.write([b"orphan from a crash"]).blob_id
    young_orphan = store.write([b"being committed right now"]).blob_id
    left_by_a_crash = secrets.token_hex(16)  # what a writer killed between batches leaves
    young_upload = secrets.token_hex(16)
    long_ago = to_text(NOW - 3 * HOUR)
    at_rest.execute("UPDATE blobs SET committed_at = %s WHERE blob_id = %s",
                    (long_ago, old_orphan))
    for blob_id, started in ((left_by_a_crash, long_ago), (young_upload, to_text(NOW))):
        at_rest.execute("INSERT INTO blobs (blob_id, row_size, started_at) VALUES (%s, %s, %s)",
                        (blob_id, ROW_SIZE, started))
        at_rest.execute("INSERT INTO blob_chunks (blob_id, seq, data) VALUES (%s, 0, %b)",
                        (blob_id, b"x" * 300))
    orphan_size = len(at_rest.sealed(old_orphan))
    with Database(PostgresUrl(blob_dsn)) as db:
        report = purge(db, store, NOW, orphan_grace=HOUR)
    assert report == PurgeReport(orphans_deleted=2, bytes_freed=orphan_size + 300)
    assert sorted(at_rest.everything()) == sorted(
        f"{table} {blob_id}" for table in ("blobs", "blob_chunks")
        for blob_id in (young_orphan, young_upload))


def test_pooled_connections_the_server_dropped_are_replaced_without_an_error(
    backends: OpenBackend, at_rest: RowsAtRest,
) -> None:
    """As after a restart of the server: each pooled connection fails once, and is retried."""
    store = BlobStore(backends(), MASTER, chunk_size=CHUNK)
    info = store.write([b"written before the server dropped us"])

    def drop_our_connections() -> None:
        at_rest.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                        " WHERE application_name = 'ppap-gateway blobs'")  # gone when it returns

    drop_our_connections()
    assert store.exists(info.blob_id)
    drop_our_connections()
    assert read_all(store.open(info.blob_id, info.wrapped_key)) == b"written before the server dropped us"
    drop_our_connections()
    assert store.exists(store.write([b"and after"]).blob_id)



def test_commits_wait_for_the_wal_flush_whatever_the_database_default(
    blob_dsn: str, backends: OpenBackend,
) -> None:
    with psycopg.connect(blob_dsn, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{admin.info.dbname}" SET synchronous_commit = off')
    backend = backends()
    # A session's settings are its own: asked on the backend's pooled connection.
    setting = backend._run(lambda db: db.execute("SHOW synchronous_commit").fetchone()[0])
    assert setting == "on"
