"""What several nodes on one database share, at the store: outbox claims with a lease, the
claims on messages being relayed, the throttles' counters, the purge's run lock, and the node
id they are made in the name of. Two Database objects on one file stand for two processes (on
PostgreSQL, tests/e2e/test_cluster_postgresql.py reruns these bodies as two nodes' pools).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import ConfigError, build_config, default_node_id
from gateway.ops.housekeeping import purge_on_one_node
from gateway.pipeline.admission import AcrossNodes, RelayingNow
from gateway.smtp.access import CLIENT_SCOPE, AuthFailureThrottle
from gateway.store.blob_backends.directory import LocalDirectoryBackend
from gateway.store.blobs import BlobStore
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from gateway.store.relaying import RelayClaims
from gateway.store.throttles import ThrottleStore
from gateway.web.ratelimit import GuessThrottle, SlidingWindow
from tests.support.clock import FakeClock

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=10)
FINGERPRINT = "f" * 64


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "gateway.sqlite3") as database:
        yield database


@pytest.fixture
def second(db: Database) -> Iterator[Database]:
    """Another view of the same store: another process (or, on PostgreSQL, another node)."""
    with Database(db.location) as database:
        yield database


def enqueue(db: Database, due_in: timedelta = timedelta(0), transfer_id: str = "tr-1") -> str:
    item_id = OutboxStore(db).enqueue(kind="receipt", now=T0, due_at=T0 + due_in,
                                      transfer_id=transfer_id, sealed=b"secret")
    assert item_id is not None
    return item_id


# -- outbox claims ---------------------------------------------------------------------------


def test_claim_due_hands_the_earliest_due_items_to_one_node_and_passes_them_over_for_another(
    db: Database, second: Database,
) -> None:
    later, sooner = enqueue(db, timedelta(minutes=2)), enqueue(db, timedelta(minutes=1))
    last = enqueue(db, timedelta(minutes=3))
    enqueue(db, timedelta(hours=1))  # not due yet
    now = T0 + timedelta(minutes=5)
    first = OutboxStore(db).claim_due("node-a", now, LEASE, limit=2)
    assert [item.id for item in first] == [sooner, later]
    assert {(item.claimed_by, item.claimed_until) for item in first} == {("node-a", now + LEASE)}
    rest = OutboxStore(second).claim_due("node-b", now, LEASE, limit=5)
    assert [item.id for item in rest] == [last]
    assert OutboxStore(second).claim_due("node-c", now, LEASE, limit=5) == []


def test_an_item_whose_lease_ran_out_is_claimed_by_another_node_and_the_first_cannot_record(
    db: Database, second: Database,
) -> None:
    item_id = enqueue(db)
    a, b = OutboxStore(db), OutboxStore(second)
    [held_by_a] = a.claim_due("node-a", T0, LEASE)
    assert b.claim_due("node-b", T0 + LEASE - timedelta(microseconds=1), LEASE) == []
    [held_by_b] = b.claim_due("node-b", T0 + LEASE, LEASE)  # node A died, or is very late
    assert a.mark_sent(held_by_a, T0 + LEASE) is False  # A's late result does not count
    assert a.mark_gave_up(held_by_a, T0 + LEASE, "550 late") is False
    assert a.mark_retry(held_by_a, T0 + LEASE, "451 late") is False
    assert b.mark_sent(held_by_b, T0 + LEASE, {"code": 250}) is True
    sent = a.get(item_id)
    assert (sent.state, sent.attempts, sent.sealed, sent.claimed_by) == ("sent", 1, None, "node-b")
    assert [event.kind for event in db.events("tr-1")] == ["outbox.sent.receipt"]


def test_a_node_takes_back_its_own_claims_at_once_after_a_restart(
    db: Database, second: Database,
) -> None:
    item_id = enqueue(db)
    [before_the_crash] = OutboxStore(db).claim_due("node-a", T0, LEASE)
    later = T0 + timedelta(seconds=3)
    [after_the_restart] = OutboxStore(second).claim_due("node-a", later, LEASE)
    assert after_the_restart.id == item_id and after_the_restart.claimed_until == later + LEASE
    assert OutboxStore(db).mark_sent(before_the_crash, later) is False  # not the claim it holds
    assert OutboxStore(second).mark_sent(after_the_restart, later) is True


def test_a_retry_lets_the_item_go_until_it_is_due_again(db: Database, second: Database) -> None:
    item_id = enqueue(db)
    outbox = OutboxStore(db)
    [claimed] = outbox.claim_due("node-a", T0, LEASE)
    assert outbox.mark_retry(claimed, T0 + timedelta(minutes=1), "451 busy") is True
    retried = outbox.get(item_id)
    assert (retried.claimed_by, retried.claimed_until, retried.attempts) == (None, None, 1)
    assert OutboxStore(second).claim_due("node-b", T0 + timedelta(seconds=59), LEASE) == []
    [again] = OutboxStore(second).claim_due("node-b", T0 + timedelta(minutes=1), LEASE)
    assert again.id == item_id and again.claimed_by == "node-b"


def test_an_item_read_without_a_claim_is_recorded_only_while_nobody_claims_it(db: Database) -> None:
    outbox = OutboxStore(db)
    unclaimed = outbox.get(enqueue(db))
    outbox.claim_due("node-a", T0, LEASE)
    assert outbox.mark_sent(unclaimed, T0) is False  # a worker holds it now
    assert outbox.mark_sent(outbox.get(enqueue(db)), T0) is True  # none does: as before claims


# -- messages being relayed ------------------------------------------------------------------


def test_a_message_one_node_relays_is_refused_to_another_until_released(
    db: Database, second: Database,
) -> None:
    a, b = RelayClaims(db), RelayClaims(second)
    until = T0 + timedelta(minutes=15)
    assert a.claim(FINGERPRINT, "node-a", T0, until) is True
    assert b.claim(FINGERPRINT, "node-b", T0, until) is False
    assert b.holder(FINGERPRINT, T0) == "node-a"
    assert b.claim("e" * 64, "node-b", T0, until) is True  # another message: no matter
    a.release(FINGERPRINT, "node-a", until)
    assert b.claim(FINGERPRINT, "node-b", T0, until) is True


def test_a_dead_nodes_claim_is_taken_over_when_it_expires_and_its_late_release_spares_the_new(
    db: Database, second: Database,
) -> None:
    a, b = RelayClaims(db), RelayClaims(second)
    expires = T0 + timedelta(minutes=15)
    assert a.claim(FINGERPRINT, "node-a", T0, expires)
    assert b.claim(FINGERPRINT, "node-b", expires - timedelta(microseconds=1),
                   expires + timedelta(minutes=1)) is False
    assert b.claim(FINGERPRINT, "node-b", expires, expires + timedelta(minutes=15)) is True
    a.release(FINGERPRINT, "node-a", expires)  # came back and let go of its old claim: no effect
    assert a.holder(FINGERPRINT, expires) == "node-b"


def test_a_node_takes_over_its_own_claim_which_its_ledger_found_free(db: Database) -> None:
    claims = RelayClaims(db)
    first, retry = T0 + timedelta(minutes=15), T0 + timedelta(minutes=16)
    assert claims.claim(FINGERPRINT, "node-a", T0, first)
    # A retry on the same machine before the first relay's release ran (or after its crash).
    assert claims.claim(FINGERPRINT, "node-a", T0 + timedelta(minutes=1), retry) is True
    claims.release(FINGERPRINT, "node-a", first)  # the first relay's release, late
    assert claims.holder(FINGERPRINT, T0 + timedelta(minutes=1)) == "node-a"
    claims.release(FINGERPRINT, "node-a", retry)
    assert claims.holder(FINGERPRINT, T0 + timedelta(minutes=1)) is None


# -- throttles -------------------------------------------------------------------------------


def test_a_limit_counted_by_two_nodes_allows_its_tries_once_not_twice(
    db: Database, second: Database,
) -> None:
    nodes = [SlidingWindow(ThrottleStore(store), "test", 3, timedelta(minutes=10))
             for store in (db, second)]
    allowed = [nodes[n % 2].reserve("192.0.2.7", T0 + timedelta(seconds=n)) is None
               for n in range(8)]
    assert allowed == [True] * 3 + [False] * 5
    assert nodes[1].retry_after("192.0.2.7", T0 + timedelta(minutes=1)) == timedelta(minutes=9)
    assert nodes[0].reserve("192.0.2.7", T0 + timedelta(minutes=10)) is None  # the first aged out


def test_guesses_on_two_nodes_throttle_the_client_on_both(db: Database, second: Database) -> None:
    a, b = (GuessThrottle(ThrottleStore(store), 4, timedelta(minutes=10)) for store in (db, second))
    assert [a.missed("198.51.100.7", T0), b.missed("198.51.100.7", T0),
            a.missed("198.51.100.7", T0), b.missed("198.51.100.7", T0)] == [False] * 3 + [True]
    assert a.wait("198.51.100.7", T0) == b.wait("198.51.100.7", T0) == timedelta(minutes=10)


def test_auth_failures_on_two_nodes_lock_the_client_on_both(db: Database, second: Database) -> None:
    clock = FakeClock()
    a, b = (AuthFailureThrottle(ThrottleStore(store), CLIENT_SCOPE, 4, timedelta(minutes=10),
                                clock) for store in (db, second))
    for node in (a, b, a):
        assert node.admit("192.0.2.7")
        node.settle("192.0.2.7", failed=True)
    assert not a.locked("192.0.2.7") and b.admit("192.0.2.7")
    assert not a.admit("192.0.2.7")  # three failures and one being checked: the fourth try
    b.settle("192.0.2.7", failed=True)
    assert a.locked("192.0.2.7") and b.locked("192.0.2.7")


def test_uses_ending_in_one_second_share_a_row_and_count_to_its_end_never_less(
    db: Database,
) -> None:
    throttles, window = ThrottleStore(db), timedelta(minutes=10)
    for after in (0.2, 0.5, 0.9):  # tries 300 ms apart: one row, so a check sums few rows
        throttles.add("test", "192.0.2.7", T0 + timedelta(seconds=after) + window)
    assert db.query("SELECT count(*) FROM throttle_hits")[0][0] == 1
    end = T0 + window + timedelta(seconds=1)
    assert throttles.count("test", "192.0.2.7", end - timedelta(microseconds=1)) == (3, end)
    assert throttles.count("test", "192.0.2.7", end) == (0, None)


def test_the_purge_forgets_counts_and_claims_that_have_ended_and_keeps_the_live_ones(
    db: Database, tmp_path: Path,
) -> None:
    throttles, claims = ThrottleStore(db), RelayClaims(db)
    for minute in range(3):
        throttles.add("test", "192.0.2.7", T0 + timedelta(minutes=minute))
    assert claims.claim(FINGERPRINT, "node-a", T0, T0 + timedelta(minutes=1))
    assert claims.claim("e" * 64, "node-a", T0, T0 + timedelta(minutes=15))
    blobs = BlobStore(LocalDirectoryBackend(tmp_path / "blobs"), bytes(32))
    try:
        report = purge_on_one_node(db, blobs, T0 + timedelta(minutes=1))
    finally:
        blobs.close()
    assert report is not None and report.expired_forgotten == 3
    assert throttles.count("test", "192.0.2.7", T0) == (1, T0 + timedelta(minutes=2))
    assert claims.holder("e" * 64, T0) == "node-a"


# -- one purge at a time ---------------------------------------------------------------------


def test_on_sqlite_every_run_is_ours_one_leader_on_one_machine_runs_the_timers(
    db: Database, second: Database,
) -> None:
    with db.exclusive_run("housekeeping") as first, second.exclusive_run("housekeeping") as other:
        assert first and other


def test_on_sqlite_the_relay_keeps_no_claims_in_the_database(tmp_path: Path) -> None:
    """One machine: the workers' ledger says it all, no database round trip per message."""
    embedded = build_config({"storage": {"data_dir": str(tmp_path)}}, environ={})
    clustered = build_config({"storage": {"data_dir": str(tmp_path),
                                          "database": "postgresql://gw@db1/gateway"}}, environ={})
    assert type(Gateway(embedded)._messages_relaying()) is RelayingNow
    assert type(Gateway(clustered)._messages_relaying()) is AcrossNodes


# -- the node's name -------------------------------------------------------------------------


def test_the_node_id_defaults_to_the_host_and_a_hash_of_the_data_directory(tmp_path: Path) -> None:
    host = "gw1.city.example.lg.jp"
    one = default_node_id(tmp_path / "a", hostname=host)
    assert one.startswith(f"{host}-") and len(one) == len(host) + 9  # '-' and 8 hex digits
    assert default_node_id(tmp_path / "a", hostname=host) == one
    assert default_node_id(tmp_path / "b", hostname=host) != one
    assert default_node_id(tmp_path, hostname="--odd host!").startswith("odd-host-")
    config = build_config({"storage": {"data_dir": str(tmp_path)}}, environ={})
    assert config.gateway.node_id == default_node_id(tmp_path)


@pytest.mark.parametrize("bad", ["", "-gw", "gw 1", "gw/1", "x" * 64, "ノード"])
def test_a_node_id_is_checked_when_the_configuration_is_read(bad: str) -> None:
    good = build_config({"gateway": {"node_id": "gw-2.a_b"}}, environ={})
    assert good.gateway.node_id == "gw-2.a_b"
    with pytest.raises(ConfigError, match="gateway.node_id"):
        build_config({"gateway": {"node_id": bad}}, environ={})
