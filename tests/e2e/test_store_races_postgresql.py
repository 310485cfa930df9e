"""What SQLite's BEGIN IMMEDIATE gave for free, proved on PostgreSQL: two parties reading and then
changing the same rows at once (two nodes, or two threads of one) take turns, and the second
sees what the first committed. Each race is made certain, not left to timing: the first party's
transaction stays open until the second is seen waiting for a lock (or, when the code under test
took no lock, until the second has finished: then the assertion on its outcome fails).

Also: a connection lost in the middle of a transaction leaves nothing half-written, a lock held
too long is a MetadataError (a 451), not a hang, and a server crash loses no commit and fails no
statement after the restart."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from gateway.config import PostgresUrl
from gateway.store.controls import ControlsStore, ResendTooSoon
from gateway.store.db import Database, MetadataError
from gateway.store.outbox import OutboxStore
from tests.support.postgres import raw_rows, wait_until_blocked

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def db(postgres_dsn: str):
    with Database(PostgresUrl(postgres_dsn)) as database:
        yield database


def add_transfer(db: Database, transfer_id: str = "t1", **overrides: Any) -> None:
    fields = dict(
        id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@example.jp>",
        sender="taro@example.jp", department="sales", subject="見積書", created_at=T0,
        expires_at=T0 + timedelta(days=7), password_channel="none", locale="ja",
    )
    db.insert_transfer(**{**fields, **overrides})


def add_link(db: Database, link_id: str, transfer_id: str = "t1", **overrides: Any) -> None:
    fields = dict(id=link_id, transfer_id=transfer_id, recipient=f"{link_id}@example.com",
                  token_hash="hash-" + link_id, created_at=T0)
    db.insert_link(**{**fields, **overrides})


def race(db: Database, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """`first` in a transaction that stays open until `second`, in another thread, waits for
    a lock (or ends without waiting); then the first commits. Both outcomes (an exception
    counts as one)."""
    outcome: list[Any] = []

    def run_second() -> None:
        try:
            outcome.append(second())
        except Exception as error:  # the outcome under test, asserted by the caller
            outcome.append(error)

    contender = threading.Thread(target=run_second)
    with db.transaction():
        won = first()
        contender.start()
        wait_until_blocked(db.location.url, done=lambda: not contender.is_alive())
    contender.join()
    return won, outcome[0]


# -- claims ---------------------------------------------------------------------------------


def test_the_last_download_of_a_link_goes_to_one_of_two_at_once(db) -> None:
    add_transfer(db, state="active")
    add_link(db, "l1", max_downloads=1, state="active", activated_at=T0)
    first, second = race(db, lambda: db.claim_download("l1"), lambda: db.claim_download("l1"))
    assert (first, second) == (True, False)
    assert db.link("l1").download_count == 1


def test_many_threads_claiming_one_links_downloads_get_exactly_its_limit(db) -> None:
    add_transfer(db, state="active")
    add_link(db, "l1", max_downloads=3, state="active", activated_at=T0)
    start = threading.Barrier(8)
    claims: list[bool] = []

    def claim() -> None:
        start.wait()
        claims.extend(db.claim_download("l1") for _ in range(2))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [False] * 13 + [True] * 3
    assert db.link("l1").download_count == 3


def test_a_purge_spares_a_stale_transfer_a_retry_is_giving_a_link_at_that_moment(db) -> None:
    now, cutoff = T0 + timedelta(hours=2), T0 + timedelta(hours=1)
    add_transfer(db, created_at=T0)  # pending since T0: stale at the cut-off

    def retry_issues_a_link() -> bool:  # as the store step does, in the commit that issues it
        reusable = db.reusable("t1", now)
        if reusable:
            add_link(db, "retry", created_at=now)
        return reusable

    issued, claimed = race(db, retry_issues_a_link, lambda: db.claim_for_purge("t1", now, cutoff))
    assert (issued, claimed) == (True, None)
    assert db.transfer("t1").state == "pending" and db.link("retry") is not None


def test_a_retry_does_not_reuse_a_transfer_a_purge_is_claiming_at_that_moment(db) -> None:
    now, cutoff = T0 + timedelta(hours=2), T0 + timedelta(hours=1)
    add_transfer(db, created_at=T0)
    claimed, reusable = race(db, lambda: db.claim_for_purge("t1", now, cutoff),
                             lambda: db.reusable("t1", now))
    assert (claimed, reusable) == ("purged", False)


def test_a_link_is_not_activated_on_a_transfer_a_purge_claimed_at_that_moment(db) -> None:
    now = T0 + timedelta(days=8)  # past expiry: due for purge
    add_transfer(db, state="active")
    add_link(db, "late")  # its delivery is being recorded just now
    claimed, activated = race(db, lambda: db.claim_for_purge("t1", now, T0),
                              lambda: db.activate_link("late", now))
    assert (claimed, activated) == ("purged", False)
    assert db.link("late").state == "pending"


def test_parallel_password_attempts_each_count_against_the_link(db) -> None:
    add_transfer(db, state="active")
    add_link(db, "l1", state="active", activated_at=T0)
    for _ in range(4):
        assert db.reserve_password_attempt("l1", T0, max_attempts=5)
    fifth, sixth = race(db, lambda: db.reserve_password_attempt("l1", T0, max_attempts=5),
                        lambda: db.reserve_password_attempt("l1", T0, max_attempts=5))
    assert (fifth, sixth) == (True, False)
    assert db.password_guard("l1").failures == 5


def test_only_one_of_two_last_wrong_passwords_locks_the_link(db) -> None:
    add_transfer(db, state="active")
    add_link(db, "l1", state="active", activated_at=T0)
    for _ in range(5):
        assert db.reserve_password_attempt("l1", T0, max_attempts=5)

    def settle():
        return db.settle_password_attempt("l1", False, T0, 5, timedelta(minutes=15))

    first, second = race(db, settle, settle)
    assert (first, second) == (T0 + timedelta(minutes=15), None)


def test_two_requests_for_a_code_at_once_send_one(db) -> None:
    add_transfer(db, state="active")
    add_link(db, "l1", state="active", activated_at=T0)
    controls = ControlsStore(db)

    def issue():
        return controls.issue_otp("l1", "mac", T0, T0 + 10 * MINUTE, MINUTE, max_sends=5)

    first, second = race(db, issue, issue)
    assert first == 1 and isinstance(second, ResendTooSoon)
    assert controls.otp_state("l1").sends == 1


def test_an_outbox_item_is_recorded_sent_once_when_two_workers_finish_it_at_once(db) -> None:
    outbox = OutboxStore(db)
    item = outbox.get(outbox.enqueue(kind="receipt", now=T0, due_at=T0, sealed=b"secret"))
    first, second = race(db, lambda: outbox.mark_sent(item, T0), lambda: outbox.mark_sent(item, T0))
    assert (first, second) == (True, False)
    assert [e.kind for e in db.events()] == ["outbox.sent.receipt"]


# -- failures -------------------------------------------------------------------------------


def test_a_connection_lost_mid_transaction_is_a_metadata_error_and_nothing_is_half_written(
    db, postgres_dsn,
) -> None:
    with pytest.raises(MetadataError):
        with db.transaction():
            add_transfer(db)
            add_link(db, "l1")
            backend = db.query("SELECT pg_backend_pid()")[0][0]
            raw_rows(postgres_dsn, "SELECT pg_terminate_backend(%s)", (backend,))
            db.append_event("stored", T0, transfer_id="t1")
    assert db.transfer("t1") is None and db.link("l1") is None and db.events() == []
    add_transfer(db, "after")  # the pool gave the lost connection up and opened another
    assert db.transfer("after") is not None


def test_a_row_locked_longer_than_the_busy_timeout_is_a_metadata_error(postgres_dsn) -> None:
    url = PostgresUrl(postgres_dsn)
    with Database(url) as holder, Database(url, busy_timeout_ms=300) as impatient:
        add_transfer(holder, state="active")
        add_link(holder, "l1", state="active", activated_at=T0)
        outcome: list[Any] = []

        def claim() -> None:
            try:
                outcome.append(impatient.claim_download("l1"))
            except MetadataError as error:
                outcome.append(error)

        waiter = threading.Thread(target=claim)
        with holder.transaction():
            assert holder.claim_download("l1")
            waiter.start()
            waiter.join(timeout=5)
            assert not waiter.is_alive(), "still waiting after 5 s: no lock timeout"
        assert isinstance(outcome[0], MetadataError) and "lock timeout" in str(outcome[0])
        assert impatient.link("l1").download_count == 1


def test_what_was_committed_survives_a_server_crash_and_no_statement_fails_after_it(
    db, postgres_server,
) -> None:
    """SIGKILL of the whole server (as a power cut, short of the disk cache): the pooled
    connections are dead, but each is checked before it is handed out, so the first statement
    after the restart already works, and finds every commit."""
    add_transfer(db)
    add_link(db, "l1")
    postgres_server.kill()
    postgres_server.start()
    assert db.transfer("t1") is not None and db.link("l1") is not None
    add_transfer(db, "after")
    assert db.transfer("after") is not None
