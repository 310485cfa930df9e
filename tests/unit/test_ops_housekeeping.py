"""Housekeeping purge on a real SQLite store and real encrypted blobs; the periodic runner."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from gateway.ops.housekeeping import PurgeReport, format_report, purge, run_periodically
from gateway.store.blobs import BlobStore
from gateway.store.db import Database
from gateway.store.passwords import hash_token

MASTER = bytes(range(32))
NOW = datetime.now(timezone.utc)
HOUR = timedelta(hours=1)
OLD = time.time() - 3 * 3600  # an mtime well past the one-hour grace


class Store:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir()
        self.data_dir = data_dir
        self.db = Database(data_dir / "meta.db")
        self.blobs = BlobStore(data_dir / "blobs", MASTER, chunk_size=1024)

    def add_transfer(
        self, transfer_id: str, *, state: str = "active", created: datetime = NOW - HOUR * 2,
        expires: datetime = NOW + timedelta(days=7), contents: tuple[bytes, ...] = (b"data",),
    ) -> list[str]:
        """A transfer with one file per content and one link; returns the blob ids."""
        infos = [self.blobs.write([content]) for content in contents]
        with self.db.transaction():
            self.db.insert_transfer(
                id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@x>",
                sender="somu@city.example.lg.jp", department="default", subject="見積書",
                created_at=created, expires_at=expires, password_channel="none", locale="ja",
                state=state, password_hash="scrypt$hash-" + transfer_id,
            )
            for position, info in enumerate(infos):
                self.db.insert_file(
                    id=f"{transfer_id}-f{position}", transfer_id=transfer_id,
                    display_name=f"MARKER-{transfer_id}-{position}-資料.zip",
                    content_type="application/zip", size=info.size, sha256=info.sha256,
                    blob_id=info.blob_id, wrapped_key=info.wrapped_key, position=position,
                )
            self.db.insert_link(
                id=f"{transfer_id}-l", transfer_id=transfer_id,
                recipient="tanaka@partner.example.com",
                token_hash=hash_token("token-" + transfer_id), created_at=created,
                state="active" if state == "active" else "pending",
            )
            self.db.append_event("transfer.created", created, transfer_id=transfer_id)
        return [info.blob_id for info in infos]

    def wrapped_keys(self, transfer_id: str) -> list[bytes]:
        return [f.wrapped_key for f in self.db.files_of(transfer_id)]

    def purge(self) -> PurgeReport:
        return purge(self.db, self.blobs, NOW, stale_pending_after=HOUR, orphan_grace=HOUR)

    def raw(self, sql: str) -> list[tuple]:
        connection = sqlite3.connect(self.data_dir / "meta.db")
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    def data_dir_contains(self, needle: bytes) -> bool:
        return any(needle in p.read_bytes() for p in self.data_dir.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "data")
    yield opened
    opened.db.close()


def age(path: Path, mtime: float = OLD) -> Path:
    os.utime(path, (mtime, mtime))
    return path


def test_expired_transfer_loses_blobs_and_wrapped_keys_but_keeps_events(store: Store) -> None:
    blob_ids = store.add_transfer("expired", expires=NOW - timedelta(seconds=1),
                                  contents=(b"first file", b"second file" * 100))
    keys = store.wrapped_keys("expired")
    marker = "MARKER-expired-0-資料.zip".encode()
    assert store.data_dir_contains(marker) and all(store.data_dir_contains(k) for k in keys)
    on_disk = sum(store.blobs.path_of(b).stat().st_size for b in blob_ids)

    report = store.purge()

    assert report == PurgeReport(transfers_purged=1, blobs_deleted=2, bytes_freed=on_disk)
    assert not any(store.blobs.exists(b) for b in blob_ids)
    assert store.raw("SELECT count(*) FROM files") == [(0,)]
    assert store.raw("SELECT state, password_hash FROM transfers") == [("purged", None)]
    kinds = [kind for (kind,) in store.raw("SELECT kind FROM events ORDER BY id")]
    assert kinds == ["transfer.created", "transfer.purged"]
    purged_event = store.db.events("expired")[-1]
    assert purged_event.detail == {"files": 2, "bytes": on_disk, "state": "purged"}
    assert purged_event.at == NOW
    # Neither the file name nor a wrapped key lingers anywhere: database, WAL, blobs.
    assert not store.data_dir_contains(marker)
    assert not any(store.data_dir_contains(k) for k in keys)


def test_active_unexpired_transfer_is_left_alone(store: Store) -> None:
    [blob_id] = store.add_transfer("live", contents=(b"still wanted",))
    [wrapped_key] = store.wrapped_keys("live")
    assert store.purge() == PurgeReport()
    with store.blobs.open(blob_id, wrapped_key) as reader:
        assert b"".join(reader) == b"still wanted"
    assert store.db.transfer("live").state == "active"
    assert [e.kind for e in store.db.events("live")] == ["transfer.created"]


def test_failed_transfer_is_purged_and_stays_failed_once(store: Store) -> None:
    [blob_id] = store.add_transfer("failed", state="failed")
    first, second = store.purge(), store.purge()
    assert first.transfers_purged == 1 and first.blobs_deleted == 1
    assert second == PurgeReport()  # already purged: no second event, nothing counted
    assert not store.blobs.exists(blob_id)
    assert store.db.transfer("failed").state == "failed"
    assert [e.kind for e in store.db.events("failed")] == ["transfer.created", "transfer.purged"]


def test_stale_pending_transfer_is_purged_but_a_young_one_is_not(store: Store) -> None:
    [stale_blob] = store.add_transfer("stale", state="pending", created=NOW - HOUR * 2)
    [young_blob] = store.add_transfer("young", state="pending", created=NOW - timedelta(minutes=10))
    report = store.purge()
    assert report.transfers_purged == 1
    assert store.db.transfer("stale").state == "purged"
    assert store.db.transfer("young").state == "pending"
    assert not store.blobs.exists(stale_blob) and store.blobs.exists(young_blob)


def test_a_stale_pending_transfer_a_retry_just_gave_a_link_is_spared(store: Store) -> None:
    [blob_id] = store.add_transfer("reused", state="pending", created=NOW - HOUR * 2)
    store.db.insert_link(  # the retry's fresh link, committed after the purge listed it
        id="retry-l", transfer_id="reused", recipient="tanaka@partner.example.com",
        token_hash=hash_token("token-retry"), created_at=NOW - timedelta(minutes=1),
    )
    assert store.purge().transfers_purged == 0
    assert store.db.transfer("reused").state == "pending" and store.blobs.exists(blob_id)
    assert store.db.activate_link("retry-l", NOW)


def test_a_purge_a_crash_interrupted_after_its_claim_is_finished(store: Store) -> None:
    [blob_id] = store.add_transfer("claimed", state="pending", created=NOW - HOUR * 2)
    assert store.db.claim_for_purge("claimed", NOW, NOW - HOUR) == "purged"  # then: SIGKILL
    assert store.db.half_purged_transfers() == ["claimed"]
    report = store.purge()
    assert (report.transfers_purged, report.blobs_deleted) == (1, 1)
    assert store.db.files_of("claimed") == [] and not store.blobs.exists(blob_id)
    assert store.db.half_purged_transfers() == []


def test_old_orphan_blobs_go_young_ones_and_referenced_ones_stay(store: Store) -> None:
    [kept] = store.add_transfer("live")
    age(store.blobs.path_of(kept))  # old, but referenced
    old_orphan = store.blobs.write([b"orphan from a crash"]).blob_id
    old_size = age(store.blobs.path_of(old_orphan)).stat().st_size
    young_orphan = store.blobs.write([b"being committed right now"]).blob_id
    stray = store.blobs.root / "README"
    stray.write_text("not a blob")
    age(stray)

    report = store.purge()

    assert report == PurgeReport(orphans_deleted=1, bytes_freed=old_size)
    assert not store.blobs.exists(old_orphan)
    assert store.blobs.exists(young_orphan) and store.blobs.exists(kept) and stray.exists()


def test_old_temp_files_go_young_ones_stay(store: Store) -> None:
    directory = store.blobs.root / "ab" / "cd"
    directory.mkdir(parents=True)
    old_temp = directory / ".tmp-abc123"
    old_temp.write_bytes(b"x" * 300)
    age(old_temp)
    young_temp = directory / ".tmp-def456"
    young_temp.write_bytes(b"y")

    report = store.purge()

    assert report == PurgeReport(orphans_deleted=1, bytes_freed=300)
    assert not old_temp.exists() and young_temp.exists()


def test_purge_on_a_fresh_store_without_blob_directory(store: Store) -> None:
    assert not store.blobs.root.exists()
    assert store.purge() == PurgeReport()


def test_format_report() -> None:
    assert format_report(PurgeReport(3, 5, 12_345_678, 0)) == (
        "purged 3 transfers, 5 blobs, 12.3 MB freed, 0 orphans"
    )
    assert format_report(PurgeReport(1, 1, 999, 1)) == (
        "purged 1 transfer, 1 blob, 999 B freed, 1 orphan"
    )
    assert format_report(PurgeReport(errors=2)).endswith(", 2 errors (retried next run)")


def test_run_periodically_survives_a_failing_job(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def main() -> None:
        finished = asyncio.Event()

        async def job() -> PurgeReport:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("disk trouble")
            if calls == 3:
                finished.set()
            return PurgeReport(transfers_purged=calls)

        runner = asyncio.create_task(
            run_periodically(timedelta(milliseconds=10), job, logging.getLogger("test.purge"))
        )
        await asyncio.wait_for(finished.wait(), 5)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    with caplog.at_level(logging.INFO, logger="test.purge"):
        asyncio.run(main())
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("purge failed")
    assert caplog.records[0].exc_info is not None
    assert messages[1].startswith("purge: purged 2 transfers, 0 blobs, 0 B freed, 0 orphans (")
    assert calls == 3


def test_cancelling_run_periodically_lets_a_run_under_way_finish() -> None:
    events: list[str] = []

    async def main() -> None:
        started = asyncio.Event()

        async def slow_job() -> PurgeReport:
            started.set()
            await asyncio.sleep(0.1)
            events.append("job finished")
            return PurgeReport()

        runner = asyncio.create_task(
            run_periodically(timedelta(milliseconds=1), slow_job, logging.getLogger("test.purge"))
        )
        await started.wait()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        events.append("runner stopped")

    asyncio.run(main())
    assert events == ["job finished", "runner stopped"]


def test_run_periodically_refuses_a_zero_interval() -> None:
    async def job() -> PurgeReport:
        return PurgeReport()

    with pytest.raises(ValueError):
        asyncio.run(run_periodically(timedelta(0), job, logging.getLogger("test.purge")))
