"""Durable before anyone learns of it, through real SMTP: with the database at
`synchronous=NORMAL` and the relay's commits synced by a group commit (store/durability.py), the
250 for a message we stored reaches the client only after an fsync of the WAL that began after
the message's last commit (one passed through as it came does not wait: the next hop has it),
and a converted message's first copy reaches the next hop only after its transfer and pending
links were synced. The WAL's fdatasync is wrapped: it notes what a fresh reader of the database
sees as it begins (so what it covers, at least) and can be held shut."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.app import Gateway, open_store
from gateway.config import Config
from gateway.store.blobs import BlobStore
from gateway.store.db import Database
from tests.support.running import (
    RunningGateway,
    corpus_mail,
    make_config,
    send,
    send_corpus,
)

PPAP = corpus_mail("01_outlook_jis_aes256")  # two external recipients, one encrypted ZIP
PLAIN = (
    b"From: somu@city.example.lg.jp\r\nTo: tanaka@partner.example.com\r\nSubject: plain\r\n"
    b"Message-ID: <plain-1@city.example.lg.jp>\r\n\r\n" + b"x" * 70 + b"\r\n"
)
FLUSH_THREAD = "wal-fsync"  # the barrier's thread: a sync there is a relay flush


class HeldWalSync:
    """The Database's fdatasync: each sync of the WAL records what it covers and, while the gate
    is shut, waits for it; a directory's sync just goes through."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.gate = threading.Event()
        self.gate.set()
        self.syncs: list[dict[str, object]] = []

    def __call__(self, descriptor: int) -> None:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            self.syncs.append({"thread": threading.current_thread().name, **self._rows()})
            assert self.gate.wait(timeout=30), "the test never opened the gate"
        os.fdatasync(descriptor)

    def _rows(self) -> dict[str, int]:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as reader:
            return {
                "deliveries": reader.execute("SELECT count(*) FROM deliveries").fetchone()[0],
                "links": reader.execute("SELECT count(*) FROM links").fetchone()[0],
            }

    def relay_flushes(self) -> list[dict[str, object]]:
        return [s for s in self.syncs if str(s["thread"]).startswith(FLUSH_THREAD)]


@pytest.fixture
def gateway(tmp_path, sink):
    config = make_config(tmp_path, f"smtp://127.0.0.1:{sink.port}")
    held = HeldWalSync(config.storage.database)

    def open_storage(config: Config, master_key: bytes) -> tuple[Database, BlobStore]:
        db, blobs = open_store(config, master_key)
        db.close()
        return Database(config.storage.database, fsync=held), blobs

    running = RunningGateway(config)
    running.gateway = Gateway(config, clock=running.clock, open_storage=open_storage)
    running.held = held
    with running:
        yield running


def until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_message_passed_through_is_answered_without_waiting_for_an_fsync(gateway, sink) -> None:
    """The next hop has it, durably: our record of it only spares a retry a duplicate, so the
    250 does not wait for the disk (a power cut can then cost a duplicate, never a message)."""
    held = gateway.held
    held.gate.clear()
    try:
        code, text = send(
            gateway.port, "somu@city.example.lg.jp", ["tanaka@partner.example.com"], PLAIN
        )
        assert code == 250, text
        assert held.relay_flushes() == [], "a pass-through waited for an fsync"
    finally:
        held.gate.set()
    assert len(sink.wait_for(1)) == 1


def test_a_converted_copy_leaves_only_once_its_links_are_synced(gateway, sink) -> None:
    held = gateway.held
    held.gate.clear()
    with ThreadPoolExecutor(1) as client:
        reply: Future = client.submit(send_corpus, gateway.port, PPAP)
        until(lambda: reply.done() or held.relay_flushes())
        assert not reply.done(), f"answered {reply.result()} without syncing the transfer"
        assert held.relay_flushes()[0] == {"thread": held.relay_flushes()[0]["thread"],
                                           "deliveries": 0, "links": 2}
        time.sleep(0.3)
        assert sink.messages == [], "a link left before its transfer was on disk"
        held.gate.set()
        code, text = reply.result(timeout=10)
    assert code == 250, text
    assert len(sink.messages) == 2
    flushes = held.relay_flushes()
    # The transfer before the first copy, the two delivery records before the answer.
    assert [(f["links"], f["deliveries"]) for f in flushes] == [(2, 0), (2, 2)]


def test_already_delivered_is_answered_after_an_fsync_of_what_it_read(gateway, sink) -> None:
    # What it read may be another worker's commit that no fsync has covered yet.
    held = gateway.held
    assert send(gateway.port, "somu@city.example.lg.jp", ["tanaka@partner.example.com"],
                PLAIN)[0] == 250
    flushes = len(held.relay_flushes())
    held.gate.clear()
    with ThreadPoolExecutor(1) as client:
        reply: Future = client.submit(
            send, gateway.port, "somu@city.example.lg.jp", ["tanaka@partner.example.com"], PLAIN
        )
        until(lambda: reply.done() or len(held.relay_flushes()) > flushes)
        assert not reply.done(), f"answered {reply.result()} without an fsync"
        held.gate.set()
        code, text = reply.result(timeout=10)
    assert (code, "already delivered" in text) == (250, True), text
    assert len(sink.messages) == 1
