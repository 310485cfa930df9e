"""Group commit (gateway/store/durability.py) and how the Database uses it: waiters share an
fsync, one that comes during an fsync begun too early for it waits for the next, a failed
fsync fails its waiters and every later flush; commits outside the relay's deferral are synced
before transaction() returns. The fsync is a held stand-in; no socket, no process."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store.db import Database, MetadataError
from gateway.store.durability import DurabilityBarrier, WalFile, deferring_commits


class HeldSync:
    """An fsync that records each call and, while `held`, waits to be let through one by one."""

    def __init__(self, held: bool = False) -> None:
        self.calls = 0
        self.error: OSError | None = None
        self._held = held
        self._passes = threading.Semaphore(0)
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        if self._held:
            assert self._passes.acquire(timeout=10), "an fsync was never let through"
        if self.error is not None:
            raise self.error

    def let_one_through(self) -> None:
        self._passes.release()


async def until(condition, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def settle() -> None:
    """Let the loop run what is ready (and the fsync thread start what it was given)."""
    for _ in range(20):
        await asyncio.sleep(0.005)


def test_waiters_that_come_together_share_one_fsync() -> None:
    async def scenario() -> None:
        sync = HeldSync()
        barrier = DurabilityBarrier(sync)
        marks = [barrier.mark() for _ in range(20)]  # twenty sessions committed
        await asyncio.gather(*(barrier.flush(mark) for mark in marks))
        assert sync.calls == 1 and barrier.fsyncs == 1
        barrier.close()

    asyncio.run(scenario())


def test_a_waiter_whose_commit_came_during_an_fsync_waits_for_the_next_and_shares_it() -> None:
    async def scenario() -> None:
        sync = HeldSync(held=True)
        barrier = DurabilityBarrier(sync)
        first = asyncio.ensure_future(barrier.flush(barrier.mark()))
        await until(lambda: sync.calls == 1)  # fsync 1 runs, held
        # Committed after fsync 1 began: it cannot cover them.
        later = [asyncio.ensure_future(barrier.flush(barrier.mark())) for _ in range(5)]
        await settle()
        assert sync.calls == 1, "nobody starts a second fsync while one runs"
        sync.let_one_through()
        await asyncio.wait_for(first, 5)
        await until(lambda: sync.calls == 2)  # fsync 2 starts as soon as fsync 1 ended
        assert not any(waiter.done() for waiter in later)
        sync.let_one_through()
        await asyncio.wait_for(asyncio.gather(*later), 5)
        assert sync.calls == 2, "the five shared fsync 2"
        barrier.close()

    asyncio.run(scenario())


def test_a_waiter_whose_commit_an_fsync_under_way_covers_shares_that_fsync() -> None:
    async def scenario() -> None:
        sync = HeldSync(held=True)
        barrier = DurabilityBarrier(sync)
        early, also_early = barrier.mark(), barrier.mark()
        first = asyncio.ensure_future(barrier.flush(early))  # fsync 1 covers both marks
        await until(lambda: sync.calls == 1)
        second = asyncio.ensure_future(barrier.flush(also_early))
        sync.let_one_through()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert sync.calls == 1
        await barrier.flush(also_early)  # already on disk: no fsync at all
        assert sync.calls == 1
        barrier.close()

    asyncio.run(scenario())


def test_a_failed_fsync_fails_its_waiters_and_every_later_flush() -> None:
    async def scenario() -> None:
        sync = HeldSync()
        barrier = DurabilityBarrier(sync)
        sync.error = OSError(errno.EIO, "I/O error")
        marks = [barrier.mark() for _ in range(3)]
        results = await asyncio.gather(*(barrier.flush(m) for m in marks), return_exceptions=True)
        assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)
        sync.error = None  # the disk "recovers": what it dropped is still gone
        with pytest.raises(OSError, match="earlier fsync"):
            await barrier.flush(barrier.mark())
        with pytest.raises(OSError, match="earlier fsync"):
            barrier.sync_now()
        barrier.close()

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_cancel_the_fsync_the_others_wait_for() -> None:
    async def scenario() -> None:
        sync = HeldSync(held=True)
        barrier = DurabilityBarrier(sync)
        mark = barrier.mark()
        leaving, staying = (asyncio.ensure_future(barrier.flush(mark)) for _ in range(2))
        await until(lambda: sync.calls == 1)
        leaving.cancel()
        await settle()
        sync.let_one_through()
        await asyncio.wait_for(staying, 5)
        barrier.close()

    asyncio.run(scenario())


# -- the Database --------------------------------------------------------------------


class CountingFsync:
    def __init__(self) -> None:
        self.files: list[str] = []

    def __call__(self, descriptor: int) -> None:
        self.files.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        os.fdatasync(descriptor)

    def wal_syncs(self) -> int:
        return sum(1 for name in self.files if name.endswith("-wal"))


def insert_event(db: Database) -> None:
    from datetime import datetime, timezone

    db.append_event("probe", datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_a_commit_outside_the_relay_is_synced_before_transaction_returns(tmp_path: Path) -> None:
    fsync = CountingFsync()
    with Database(tmp_path / "meta.db", fsync=fsync) as db:
        before = fsync.wal_syncs()
        insert_event(db)
        assert fsync.wal_syncs() == before + 1
        assert db._query("PRAGMA synchronous")[0][0] == 1  # NORMAL: SQLite would not sync it


def test_commits_in_the_relay_wait_for_the_barrier(tmp_path: Path) -> None:
    fsync = CountingFsync()

    async def relay_like(db: Database) -> int:
        with deferring_commits() as deferred:
            await asyncio.to_thread(insert_event, db)  # as the stages commit
            await asyncio.to_thread(insert_event, db)
            assert deferred.last == db.barrier.mark() - 1  # the last mark: the second commit
            before = fsync.wal_syncs()
            await db.barrier.flush(deferred.last)
            return fsync.wal_syncs() - before

    with Database(tmp_path / "meta.db", fsync=fsync) as db:
        before = fsync.wal_syncs()
        assert asyncio.run(relay_like(db)) == 1
        assert fsync.wal_syncs() == before + 1, "the two commits themselves synced nothing"


def test_a_sync_failure_after_commit_is_a_metadata_error(tmp_path: Path) -> None:
    failing = {"on": False}

    def fsync(descriptor: int) -> None:
        if failing["on"]:
            raise OSError(errno.EIO, "I/O error")
        os.fdatasync(descriptor)

    with Database(tmp_path / "meta.db", fsync=fsync) as db:
        failing["on"] = True
        with pytest.raises(MetadataError, match="cannot sync"):
            insert_event(db)


def test_without_group_commit_sqlite_syncs_every_commit_itself(tmp_path: Path) -> None:
    fsync = CountingFsync()
    with Database(tmp_path / "meta.db", group_commit=False, fsync=fsync) as db:
        insert_event(db)
        assert db._query("PRAGMA synchronous")[0][0] == 2  # FULL
        assert fsync.files == []


def test_wal_file_follows_a_new_wal_and_syncs_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    fsync = CountingFsync()
    wal = WalFile(Path(f"{path}-wal"), fsync)
    wal.sync()  # no -wal file (nobody has the database open): nothing to sync
    assert fsync.files == []
    for round_ in range(2):  # each connection's life makes (and at its end deletes) a new WAL
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE IF NOT EXISTS t (v)")
        connection.execute("INSERT INTO t VALUES (?)", (round_,))
        connection.commit()
        wal.sync()
        wal.sync()
        connection.close()
    directory = str(tmp_path)
    assert fsync.files == [directory, f"{path}-wal", f"{path}-wal"] * 2
    wal.close()


def test_the_outbox_worker_syncs_what_a_relay_queued_before_it_leaves(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from gateway.config import build_config
    from gateway.model import DeliveryResult, OutgoingMessage
    from gateway.notify.worker import OutboxWorker
    from gateway.store.outbox import OutboxStore

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    fsync = CountingFsync()
    syncs_when_sent: list[int] = []

    class Composer:
        def compose(self, item) -> OutgoingMessage:
            return OutgoingMessage("gw@city.example.lg.jp", ("a@partner.example.com",), b"x\r\n")

    class NextHop:
        async def deliver(self, message: OutgoingMessage) -> DeliveryResult:
            syncs_when_sent.append(fsync.wal_syncs())
            return DeliveryResult(True, 250, "2.0.0 ok")

    async def scenario(outbox: OutboxStore) -> int:
        with deferring_commits():  # as the relay queues a notice: not synced by its commit
            await asyncio.to_thread(outbox.enqueue, kind="receipt", now=now, due_at=now)
        queued = fsync.wal_syncs()
        settings = build_config({}, (), environ={}).notify
        worker = OutboxWorker(outbox, Composer(), NextHop(), None, settings, lambda: now)
        assert await worker.run_once() == 1
        return queued

    with Database(tmp_path / "meta.db", fsync=fsync) as db:
        queued = asyncio.run(scenario(OutboxStore(db)))
    assert syncs_when_sent == [queued + 1], "the notice left before its row was on disk"
