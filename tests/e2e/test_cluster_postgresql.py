"""Several nodes on one PostgreSQL database, each node a Database of its own (its own pool): the
store-level bodies of tests/unit/test_store_cluster.py again, then what only a server shows —
claims made at the same moment from both nodes, the purge's advisory lock, two notice workers
sending to one sink, a retried message reaching the other node, and a throttle's limit under
parallel tries. The notice workers also run on SQLite (two Database objects on one file)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tests.unit.test_store_cluster as sqlite_tests
from gateway.config import NotifySettings, PostgresUrl
from gateway.errors import Stop, TempFail
from gateway.model import Envelope, OutgoingMessage
from gateway.notify.worker import OutboxWorker
from gateway.ops.housekeeping import purge_on_one_node
from gateway.outbound.smtp import SmtpNextHop
from gateway.pipeline.admission import AcrossNodes, RelayingNow, SkipServed
from gateway.pipeline.transaction import Transaction
from gateway.replies import ALREADY_DELIVERED, STILL_RELAYING
from gateway.store.blobs import BlobStore
from gateway.store.db import Database
from gateway.store.outbox import OutboxItem, OutboxStore
from gateway.store.relaying import RelayClaims
from gateway.store.throttles import ThrottleStore
from gateway.web.ratelimit import SlidingWindow
from tests.support.clock import FakeClock
from tests.support.postgres import about_sqlite, database_tests, raw_rows
from tests.support.sink import RecordingSink

globals().update(database_tests(sqlite_tests, "db", "second"))
test_on_sqlite_every_run_is_ours_one_leader_on_one_machine_runs_the_timers = about_sqlite(
    "PostgreSQL's run lock is an advisory lock: test_a_purge_on_one_node_makes_the_others_skip")

T0, LEASE = sqlite_tests.T0, sqlite_tests.LEASE
GATEWAY_FROM = "ppap-gateway@city.example.lg.jp"
NOTIFY = NotifySettings(from_address=GATEWAY_FROM, poll_interval=timedelta(seconds=60))


@pytest.fixture
def db(postgres_dsn: str) -> Iterator[Database]:
    with Database(PostgresUrl(postgres_dsn)) as database:
        yield database


@pytest.fixture
def second(db: Database) -> Iterator[Database]:
    """The other node: its own pool on the same database."""
    with Database(db.location) as database:
        yield database


def at_once(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run the jobs in threads of their own, all let go at the same moment."""
    start = threading.Barrier(len(jobs))

    def released(job: Callable[[], Any]) -> Any:
        start.wait()
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(released, jobs))


# -- outbox claims ---------------------------------------------------------------------------


def test_nodes_claiming_at_the_same_moment_claim_every_item_exactly_once(
    db: Database, second: Database,
) -> None:
    queued = {sqlite_tests.enqueue(db) for _ in range(300)}

    def claimer(outbox: OutboxStore, node: str) -> Callable[[], list[str]]:
        def claim_all() -> list[str]:
            """Claim a few, record them sent (as a worker would), until none is left."""
            got: list[str] = []
            while items := outbox.claim_due(node, T0, LEASE, limit=5):
                got += [item.id for item in items]
                assert all([outbox.mark_sent(item, T0) for item in items])  # a list: each marked
            return got
        return claim_all

    # Four workers per node, each its own claimer (a node takes back its own claims).
    runs = at_once([claimer(OutboxStore(store), f"node-{name}-{n}")
                    for name, store in (("a", db), ("b", second)) for n in range(4)])
    claims = Counter(item_id for run in runs for item_id in run)
    assert set(claims) == queued
    assert [item_id for item_id, times in claims.items() if times > 1] == []


# -- two notice workers, one sink ------------------------------------------------------------


class ReceiptComposer:
    """The same bytes for the same item each time, its id in the Message-ID."""

    def compose(self, item: OutboxItem) -> OutgoingMessage:
        data = (f"From: {GATEWAY_FROM}\r\nTo: kikaku@city.example.lg.jp\r\n"
                f"Message-ID: <notice-{item.id}@city.example.lg.jp>\r\n\r\nreceipt\r\n")
        return OutgoingMessage(GATEWAY_FROM, ("kikaku@city.example.lg.jp",), data.encode())


@pytest.fixture(params=["sqlite", "postgresql"])
def two_nodes(request: pytest.FixtureRequest,
              tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    location = (PostgresUrl(request.getfixturevalue("postgres_dsn"))
                if request.param == "postgresql" else tmp_path / "gateway.sqlite3")
    with Database(location) as first, Database(location) as other:
        yield first, other


def test_two_notice_workers_send_each_item_exactly_once(
    two_nodes: tuple[Database, Database], sink: RecordingSink,
) -> None:
    db, second = two_nodes
    clock = FakeClock()
    queued = {OutboxStore(db).enqueue(kind="receipt", now=clock(), due_at=clock(),
                                      transfer_id="tr-1") for _ in range(20)}
    hops = [SmtpNextHop("127.0.0.1", sink.port, starttls="off", timeout=5.0, helo_name="gw.test")
            for _ in range(2)]
    workers = [OutboxWorker(OutboxStore(store), ReceiptComposer(), hop, None, NOTIFY, clock,
                            node=node)
               for store, hop, node in zip((db, second), hops, ("node-a", "node-b"))]

    async def both_rounds() -> list[int]:
        try:
            return await asyncio.gather(*(worker.run_once() for worker in workers))
        finally:
            for hop in hops:
                await hop.close()

    handled = asyncio.run(both_rounds())
    sent = Counter(re.search(rb"Message-ID: <notice-(\w+)@", message.data).group(1).decode()
                   for message in sink.messages)
    assert set(sent) == queued and max(sent.values()) == 1
    assert sum(handled) == len(queued)
    outbox = OutboxStore(db)
    assert {outbox.get(item_id).state for item_id in queued} == {"sent"}
    assert len([event for event in db.events() if event.kind == "outbox.sent.receipt"]) == 20


# -- one purge at a time ---------------------------------------------------------------------


def test_a_purge_on_one_node_makes_the_others_skip(
    db: Database, second: Database, tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path / "blobs", bytes(32))
    try:
        with db.exclusive_run("housekeeping") as ours:
            assert ours
            assert purge_on_one_node(second, blobs, T0) is None
            with second.exclusive_run("housekeeping") as theirs:
                assert not theirs
        assert purge_on_one_node(second, blobs, T0) is not None  # let go: the next one runs
    finally:
        blobs.close()


def test_the_run_lock_of_a_node_that_died_goes_with_its_session(
    db: Database, second: Database, postgres_dsn: str,
) -> None:
    with db.exclusive_run("housekeeping") as ours:
        assert ours
        # The node's machine is gone: the server ends its session (as after tcp keepalives).
        [(ended,)] = raw_rows(
            postgres_dsn, "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = 3",
            (0x50504150,))
        assert ended
        with second.exclusive_run("housekeeping") as theirs:
            assert theirs


# -- a retry reaching the other node ---------------------------------------------------------


RAW = (b"From: kikaku@city.example.lg.jp\r\nTo: tanaka@partner.example.com\r\n"
       b"Subject: test\r\n\r\nbody\r\n")
ENVELOPE = Envelope("kikaku@city.example.lg.jp", ("tanaka@partner.example.com",))


def test_a_retry_reaching_another_node_while_the_first_relays_it_is_told_still_relaying(
    db: Database, second: Database,
) -> None:
    clock = FakeClock()
    node_a = AcrossNodes(RelayingNow(), RelayClaims(db), "node-a", clock)
    node_b = AcrossNodes(RelayingNow(), RelayClaims(second), "node-b", clock)
    admit_a, admit_b = SkipServed(db, node_a), SkipServed(second, node_b)

    async def steps() -> None:
        first = Transaction(ENVELOPE, RAW)
        await admit_a.process(first)  # node A relays it
        retry = Transaction(ENVELOPE, RAW)
        with pytest.raises(TempFail) as deferred:
            await admit_b.process(retry)
        assert deferred.value.reply == STILL_RELAYING
        for release in retry.releases:
            release()
        # Node A delivered it, recorded that, and let go.
        db.record_delivery(first.fingerprint, "tanaka@partner.example.com", clock())
        for release in first.releases:
            release()
        await node_a.settled()
        again = Transaction(ENVELOPE, RAW)
        with pytest.raises(Stop) as served:
            await admit_b.process(again)
        assert served.value.reply == ALREADY_DELIVERED
        for release in again.releases:
            release()
        await node_b.settled()

    asyncio.run(steps())
    assert raw_rows(db.location.url, "SELECT count(*) FROM relaying")[0][0] == 0


# -- throttles under parallel tries ----------------------------------------------------------


def test_parallel_tries_on_two_nodes_get_the_limit_once(db: Database, second: Database) -> None:
    windows = [SlidingWindow(ThrottleStore(store), "test", 5, timedelta(minutes=10))
               for store in (db, second)]
    allowed = at_once([lambda window=windows[n % 2]: window.reserve("192.0.2.7", T0) is None
                       for n in range(16)])
    assert allowed.count(True) == 5
