"""Faults with nothing lost: a full disk, a failing fsync, SQLite locked by another process, the
master key gone, a next hop slower than its timeout. Each time the client gets a 4xx (so the
sending MTA keeps the mail), nothing half-done reaches the next hop or stays on disk, and once
the fault clears the sender's retry is delivered exactly once."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from gateway.app import Gateway, open_store
from gateway.config import Config
from gateway.store.blobs import TEMP_PREFIX, BlobStore
from gateway.store.db import Database
from tests.support.processes import ROOT, free_port
from tests.support.running import RunningGateway, corpus_mail, make_config, send_corpus
from tests.support.sqlite_lock import locked_by_another_process
from tests.support.store_rows import link_states

PPAP = corpus_mail("01_outlook_jis_aes256")  # two external recipients, one encrypted ZIP


class FailingDisk:
    """The blob store's disk, made to fail on demand like a real one: ENOSPC on write, EIO on
    fsync (the durable.fsync path: files and directories alike)."""

    def __init__(self) -> None:
        self.write_error: int | None = None
        self.fsync_error: int | None = None

    def fsync(self, descriptor: int) -> None:
        if self.fsync_error is not None:
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        os.fsync(descriptor)

    def wrap(self, file: BinaryIO) -> BinaryIO:
        disk = self

        class Writer:
            def write(self, data: bytes) -> int:
                if disk.write_error is not None:
                    raise OSError(disk.write_error, os.strerror(disk.write_error))
                return file.write(data)

            def flush(self) -> None:
                file.flush()

        return Writer()  # type: ignore[return-value]

    def open_store(self, config: Config, master_key: bytes) -> tuple[Database, BlobStore]:
        db, blobs = open_store(config, master_key)
        return db, BlobStore(blobs.root, master_key, config.storage.chunk_size,
                             fsync=self.fsync, wrap_temp_file=self.wrap)


@pytest.fixture
def gateway_on(tmp_path, sink):
    """Factory: a running gateway relaying to the sink, on a disk of the test's choosing."""
    started: list[RunningGateway] = []

    def start(disk: FailingDisk | None = None, document: dict | None = None) -> RunningGateway:
        running = RunningGateway(make_config(tmp_path, f"smtp://127.0.0.1:{sink.port}", document))
        running.gateway = Gateway(running.gateway.config, clock=running.clock,
                                  open_storage=disk.open_store if disk else open_store)
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()


def assert_nothing_half_done(running: RunningGateway, sink) -> None:
    assert sink.messages == [], "nothing may reach the next hop"
    blobs = running.gateway.blobs
    assert list(blobs.iter_blob_ids()) == []
    assert list(blobs.root.rglob(f"{TEMP_PREFIX}*")) == []
    assert all(state != "active" for states in link_states(running).values() for state in states)


def assert_retry_delivered_once(running: RunningGateway, sink) -> None:
    code, text = send_corpus(running.port, PPAP)
    assert code == 250, text
    received = sink.wait_for(2)
    time.sleep(0.2)  # a duplicate would arrive now
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(PPAP.rcpt_tos)
    assert len(received) == 2 and len(list(running.gateway.blobs.iter_blob_ids())) == 1


@pytest.mark.parametrize(
    "fault, code, enhanced",
    [("write_error", 452, "4.3.1"), ("fsync_error", 451, "4.3.0")],
    ids=["disk-full-enospc", "fsync-eio"],
)
def test_blob_disk_fault_gives_4xx_then_retry_is_delivered_once(
    gateway_on, sink, fault, code, enhanced
):
    disk = FailingDisk()
    running = gateway_on(disk)
    setattr(disk, fault, errno.ENOSPC if fault == "write_error" else errno.EIO)
    reply, text = send_corpus(running.port, PPAP)
    assert (reply, text[:5]) == (code, enhanced), text
    assert_nothing_half_done(running, sink)
    setattr(disk, fault, None)
    assert_retry_delivered_once(running, sink)


def can_mount_tmpfs(directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)],
                           capture_output=True)
    return probe.returncode == 0


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_real_full_tmpfs_gives_452_then_retry_is_delivered_once(tmp_path, gateway_on, sink):
    blobs_dir = tmp_path / "data" / "blobs"
    if not can_mount_tmpfs(blobs_dir):
        pytest.skip("mounting a tmpfs is not permitted here (the injected ENOSPC test covers it)")
    try:
        filler = fill(blobs_dir)
        running = gateway_on()
        reply, text = send_corpus(running.port, PPAP)
        assert (reply, text[:5]) == (452, "4.3.1"), text
        assert_nothing_half_done(running, sink)
        filler.unlink()
        assert_retry_delivered_once(running, sink)
        running.stop()
    finally:
        subprocess.run(["umount", str(blobs_dir)], check=True)


def test_database_locked_by_another_process_gives_451_within_busy_timeout_then_retry_once(
    gateway_on, sink
):
    running = gateway_on()
    with locked_by_another_process(running.gateway.config.storage.database):
        started = time.monotonic()
        reply, text = send_corpus(running.port, PPAP)
        elapsed = time.monotonic() - started
    assert (reply, text[:5]) == (451, "4.3.0"), text
    assert elapsed < 5 * 2 + 3, "answered within the busy timeout, did not hang"
    assert_nothing_half_done(running, sink)
    assert_retry_delivered_once(running, sink)


def test_unchanged_mail_delivered_while_the_database_is_locked_is_not_sent_twice(
    gateway_on, sink
):
    """The next hop has the copy before we can record it: a 4xx would make the retry send it
    again, so the answer is 250 and the failed record is only logged."""
    running = gateway_on()
    plain = corpus_mail("13_no_attachment")
    with locked_by_another_process(running.gateway.config.storage.database):
        reply, text = send_corpus(running.port, plain)
    assert reply == 250, text
    assert [m.data for m in sink.wait_for(1)] == [plain.raw]


def serve_refusal(tmp_path: Path) -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    command = [
        sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config" / "gateway.toml"),
        "-o", f"smtp.listen=127.0.0.1:{free_port()}", "-o", f"portal.listen=127.0.0.1:{free_port()}",
        "-o", f"admin.listen=127.0.0.1:{free_port()}", "-o", f"storage.data_dir={data}",
        "-o", f"storage.database={data}/gw.sqlite3", "-o", f"storage.master_key_file={data}/master.key",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PPAP_GATEWAY_MASTER_KEY"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "damage, says",
    [("directory", "not a regular file"), ("removed", "missing but stored data exists")],
)
def test_start_refuses_clearly_when_the_master_key_is_unusable(tmp_path, damage, says):
    data = tmp_path / "data"
    data.mkdir()
    Database(data / "gw.sqlite3").close()  # stored data exists: a new key would orphan it
    if damage == "directory":
        (data / "master.key").mkdir()
    result = serve_refusal(tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "master key" in line]
    assert "storage.master_key_file" in line and str(data / "master.key") in line and says in line
    assert not (data / "master.key").is_file(), "no fresh key was made over the old data"


def test_running_gateway_keeps_the_key_it_read_at_start_when_the_file_goes(gateway_on, sink):
    running = gateway_on()
    running.gateway.config.storage.master_key_file.unlink()
    code, text = send_corpus(running.port, PPAP)  # the key is read once, at start
    assert code == 250, text
    assert len(sink.wait_for(2)) == 2


def test_next_hop_slower_than_its_timeout_gives_451_then_retry_reaches_only_the_rest(
    gateway_on, sink
):
    running = gateway_on(document={"next_hop": {"timeout": "1s"}})
    sink.delay_next("DATA", 4)  # the first copy's DATA outlasts the gateway's patience
    started = time.monotonic()
    reply, text = send_corpus(running.port, PPAP)
    assert (reply, text[:5]) == (451, "4.4.2"), text
    assert time.monotonic() - started < 4, "answered at the next hop timeout, not the client's"
    served = {r for m in sink.messages for r in m.rcpt_tos}
    assert len(served) == 1, "the second copy went through; the slow one was cut off"
    code, text = send_corpus(running.port, PPAP)
    assert code == 250, text
    time.sleep(4.5)  # the cut-off DATA must not turn up late either
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(PPAP.rcpt_tos)


def test_start_up_clean_up_spares_blobs_of_another_gateway_on_the_same_data_dir(tmp_path, sink):
    from gateway.app import utc_now

    config = make_config(tmp_path, f"smtp://127.0.0.1:{sink.port}")
    with RunningGateway(config, utc_now) as first:
        in_the_making = first.gateway.blobs.write([b"committed in a moment"]).blob_id
        with RunningGateway(config, utc_now) as second:  # e.g. started by mistake
            assert second.gateway.blobs.exists(in_the_making), "a live writer's blob was taken"
    with RunningGateway(config, utc_now) as alone:  # sole writer: a crash's orphan goes at once
        assert not alone.gateway.blobs.exists(in_the_making)
