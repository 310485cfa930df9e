"""The outbox worker against a real SQLite outbox and a real SMTP sink on a socket; time is a
FakeClock, so back-off and max_age are driven without sleeping."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import NotifySettings
from gateway.model import OutgoingMessage
from gateway.notify import ComposeError
from gateway.notify.webhook import WebhookCall
from gateway.notify.worker import GIVE_UP_NOTE, OutboxWorker
from gateway.outbound.smtp import SmtpNextHop
from gateway.store.crypto import open_small, seal_small
from gateway.store.db import Database
from gateway.store.outbox import OutboxItem, OutboxStore, new_outbox_id
from tests.support.clock import FakeClock
from tests.support.delivery import run  # a fresh loop that always closes the hop
from tests.support.sink import RecordingSink
from tests.support.sqlite_lock import locked_by_another_process

MASTER_KEY = bytes(range(32))
GATEWAY_FROM = "ppap-gateway@city.example.lg.jp"
SENDER = "kikaku@city.example.lg.jp"
RECIPIENT = "tanaka@partner.example.com"
PASSWORD = "Qz8-fT2m-Lp4w"
SETTINGS = NotifySettings(
    from_address=GATEWAY_FROM, retry_initial=timedelta(minutes=1), retry_max=timedelta(hours=1),
    max_age=timedelta(days=2), poll_interval=timedelta(seconds=60),
)


class TinyComposer:
    """A real, deterministic composer: the same item always gives the same bytes."""

    def __init__(self) -> None:
        self.composed: list[str] = []

    def compose(self, item: OutboxItem) -> OutgoingMessage | WebhookCall:
        self.composed.append(item.id)
        if item.payload.get("purged"):
            raise ComposeError(f"outbox item {item.id}: transfer is purged")
        if item.payload.get("explode"):
            raise RuntimeError("a template bug")
        if item.kind == "webhook-password":
            return WebhookCall("http://127.0.0.1:9/hook", b"{}")
        secret = open_small(MASTER_KEY, item.id.encode(), item.sealed).decode() if item.sealed else "-"
        to = SENDER if item.kind in (GIVE_UP_NOTE, "receipt") else RECIPIENT
        data = (
            f"From: {GATEWAY_FROM}\r\nTo: {to}\r\nSubject: {item.kind}\r\n"
            f"Message-ID: <notice-{item.id}@city.example.lg.jp>\r\n\r\n"
            f"secret: {secret}\r\npayload: {json.dumps(item.payload, sort_keys=True)}\r\n"
        ).encode()
        return OutgoingMessage(GATEWAY_FROM, (to,), data)


class SimulatedCrash(Exception):
    """Stands for the process dying at this point."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "gateway.sqlite3") as database:
        yield database


@pytest.fixture
def outbox(db: Database) -> OutboxStore:
    return OutboxStore(db)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def enqueue(outbox: OutboxStore, clock: FakeClock, kind: str = "password-recipient", *,
            due_in: timedelta = timedelta(0), transfer_id: str | None = "tr-1",
            payload: dict[str, Any] | None = None) -> str:
    item_id = new_outbox_id()
    sealed = seal_small(MASTER_KEY, item_id.encode(), PASSWORD.encode())
    queued = outbox.enqueue(
        kind=kind, now=clock(), due_at=clock() + due_in, item_id=item_id, sealed=sealed,
        transfer_id=transfer_id, link_id="ln-1", payload=payload, dedupe_key=f"test:{item_id}",
    )
    assert queued == item_id
    return item_id


def hop_to(port: int) -> SmtpNextHop:
    return SmtpNextHop("127.0.0.1", port, starttls="off", timeout=2.0, helo_name="gw.test")


def worker(outbox: OutboxStore, hop: SmtpNextHop, clock: FakeClock, **options: Any) -> OutboxWorker:
    composer = options.pop("composer", None) or TinyComposer()
    settings = options.pop("settings", SETTINGS)
    return OutboxWorker(outbox, composer, hop, None, settings, clock, **options)


def once(outbox: OutboxStore, hop: SmtpNextHop, clock: FakeClock, **options: Any) -> int:
    return run(hop, worker(outbox, hop, clock, **options).run_once)


def kinds_of_events(db: Database) -> list[str]:
    return [event.kind for event in db.events()]


def notes(outbox: OutboxStore) -> list[OutboxItem]:
    return [item for item in outbox.items() if item.kind == GIVE_UP_NOTE]


# -- delivery ----------------------------------------------------------------------------------


def test_due_item_is_delivered_marked_sent_with_an_event_and_its_secret_wiped(
    db: Database, outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    item_id = enqueue(outbox, clock)
    assert once(outbox, hop_to(sink.port), clock) == 1
    [received] = sink.messages
    assert received.rcpt_tos == [RECIPIENT] and received.mail_from == GATEWAY_FROM
    assert f"secret: {PASSWORD}".encode() in received.data
    item = outbox.get(item_id)
    assert item is not None
    assert (item.state, item.sent_at, item.attempts, item.sealed) == ("sent", clock(), 1, None)
    assert db.query("SELECT sealed FROM outbox WHERE id = ?", (item_id,))[0][0] is None
    [event] = db.events("tr-1")
    assert event.kind == "outbox.sent.password-recipient"
    assert event.detail["item"] == item_id and event.detail["code"] == 250


def test_item_due_later_is_not_sent_until_the_clock_passes_its_due_at(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    item_id = enqueue(outbox, clock, due_in=timedelta(minutes=5))
    hop = hop_to(sink.port)
    w = worker(outbox, hop, clock)

    async def steps() -> list[int]:
        handled = [await w.run_once()]
        clock.advance(minutes=4, seconds=59)
        handled.append(await w.run_once())
        clock.advance(seconds=1)
        handled.append(await w.run_once())
        return handled

    assert run(hop, steps) == [0, 0, 1]
    assert len(sink.messages) == 1
    assert outbox.get(item_id).state == "sent"


def test_due_items_go_out_one_at_a_time_in_due_order(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    late = enqueue(outbox, clock, "receipt", due_in=timedelta(minutes=3))
    early = enqueue(outbox, clock, "password-recipient", due_in=timedelta(minutes=1))
    clock.advance(minutes=10)
    assert once(outbox, hop_to(sink.port), clock) == 2
    subjects = [m.data.split(b"Message-ID: <notice-")[1][:32].decode() for m in sink.messages]
    assert subjects == [early, late]


# -- retries and giving up ---------------------------------------------------------------------


def test_next_hop_down_retries_with_doubling_backoff_then_delivers_once(
    outbox: OutboxStore, clock: FakeClock
) -> None:
    item_id = enqueue(outbox, clock)
    sink = RecordingSink()  # its port is free but nobody listens yet: connection refused
    hop = hop_to(sink.port)
    w = worker(outbox, hop, clock)

    async def steps() -> list[timedelta]:
        waits = []
        for _ in range(4):
            assert await w.run_once() == 1
            item = outbox.get(item_id)
            waits.append(item.due_at - clock())
            assert item.state == "pending" and item.last_error.startswith("451 ")
            clock.now = item.due_at
        sink.start()
        assert await w.run_once() == 1
        assert await w.run_once() == 0
        return waits

    try:
        waits = run(hop, steps)
    finally:
        sink.stop()
    minutes = [timedelta(minutes=n) for n in (1, 2, 4, 8)]
    assert waits == minutes
    assert len(sink.messages) == 1
    item = outbox.get(item_id)
    assert (item.state, item.attempts, item.sealed) == ("sent", 5, None)


def test_last_retry_is_scheduled_just_past_max_age_so_the_give_up_is_timely(
    outbox: OutboxStore, clock: FakeClock
) -> None:
    start = clock()
    item_id = enqueue(outbox, clock)
    clock.advance(days=2, seconds=-30)
    sink = RecordingSink()  # never started
    once(outbox, hop_to(sink.port), clock)
    assert outbox.get(item_id).due_at == start + SETTINGS.max_age + timedelta(microseconds=1)


def test_item_older_than_max_age_gives_up_with_an_event_and_exactly_one_note(
    db: Database, outbox: OutboxStore, clock: FakeClock
) -> None:
    item_id = enqueue(outbox, clock)
    down = RecordingSink()  # never started
    hop = hop_to(down.port)
    w = worker(outbox, hop, clock)

    async def steps() -> None:
        await w.run_once()  # 451: a retry
        clock.advance(days=2, seconds=1)
        await w.run_once()  # too old: gave up, and the note is due at once (and fails too)
        await w.run_once()

    run(hop, steps)
    item = outbox.get(item_id)
    assert (item.state, item.sealed) == ("gave_up", None)
    assert item.last_error.startswith("not delivered within 2 days") and "451" in item.last_error
    gave_up = [e for e in db.events() if e.kind == "outbox.gave_up.password-recipient"]
    assert len(gave_up) == 1 and gave_up[0].detail["item"] == item_id
    [note] = notes(outbox)
    assert note.dedupe_key == f"{GIVE_UP_NOTE}:{item_id}"
    assert (note.transfer_id, note.link_id, note.created_at) == ("tr-1", "ln-1", clock())
    assert note.payload["failed_kind"] == "password-recipient"
    assert note.payload["failed_item"] == item_id
    assert note.payload["error"].startswith("not delivered within")


def test_a_give_up_note_that_cannot_be_delivered_never_spawns_another(
    db: Database, outbox: OutboxStore, clock: FakeClock
) -> None:
    note_id = enqueue(outbox, clock, GIVE_UP_NOTE)
    down = RecordingSink()
    hop = hop_to(down.port)
    w = worker(outbox, hop, clock)

    async def steps() -> None:
        await w.run_once()
        clock.advance(days=3)
        await w.run_once()
        await w.run_once()

    run(hop, steps)
    assert outbox.get(note_id).state == "gave_up"
    assert [item.id for item in notes(outbox)] == [note_id]
    assert kinds_of_events(db) == [f"outbox.gave_up.{GIVE_UP_NOTE}"]


def test_permanent_refusal_gives_up_at_once_and_notes_the_sender(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    item_id = enqueue(outbox, clock)
    sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=RECIPIENT)
    hop = hop_to(sink.port)
    w = worker(outbox, hop, clock)

    async def steps() -> list[int]:
        return [await w.run_once(), await w.run_once()]  # the item; then its note, due at once

    assert run(hop, steps) == [1, 1]
    item = outbox.get(item_id)
    assert (item.state, item.attempts, item.sealed) == ("gave_up", 1, None)
    assert item.last_error.startswith("550 5.1.1 no such user")
    [note] = notes(outbox)
    assert note.payload["error"].startswith("550") and note.state == "sent"
    assert [m.rcpt_tos for m in sink.messages] == [[SENDER]]


def test_compose_error_gives_up_at_once(outbox: OutboxStore, clock: FakeClock, sink: RecordingSink) -> None:
    item_id = enqueue(outbox, clock, payload={"purged": True})
    once(outbox, hop_to(sink.port), clock)
    item = outbox.get(item_id)
    assert item.state == "gave_up" and "transfer is purged" in item.last_error
    [note] = notes(outbox)
    assert note.payload["failed_item"] == item_id


def test_an_unexpected_composer_error_is_logged_and_retried_not_raised(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    item_id = enqueue(outbox, clock, payload={"explode": True})
    assert once(outbox, hop_to(sink.port), clock) == 1
    item = outbox.get(item_id)
    assert (item.state, item.attempts, item.due_at) == ("pending", 1, clock() + timedelta(minutes=1))
    assert "composing failed" in caplog.text and sink.messages == []


def test_giving_up_an_item_without_transfer_enqueues_no_note(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    item_id = enqueue(outbox, clock, transfer_id=None, payload={"purged": True})
    once(outbox, hop_to(sink.port), clock)
    assert outbox.get(item_id).state == "gave_up"
    assert notes(outbox) == []


def test_webhook_call_without_a_webhook_sender_gives_up(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    item_id = enqueue(outbox, clock, "webhook-password")
    once(outbox, hop_to(sink.port), clock)
    item = outbox.get(item_id)
    assert item.state == "gave_up" and "no webhook" in item.last_error


# -- crashes, restarts and a second worker -----------------------------------------------------


def test_crash_between_acceptance_and_mark_sent_resends_the_same_bytes_after_restart(
    db: Database, outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    item_id = enqueue(outbox, clock)

    def die(item: OutboxItem) -> None:
        raise SimulatedCrash(item.id)

    with pytest.raises(SimulatedCrash):
        once(outbox, hop_to(sink.port), clock, after_send=die)
    assert len(sink.messages) == 1
    item = outbox.get(item_id)
    assert item.state == "pending" and item.sealed is not None  # nothing recorded yet

    clock.advance(seconds=3)
    assert once(outbox, hop_to(sink.port), clock) == 1  # the restarted worker
    first, second = sink.messages  # at least once: the receiver drops the twin by Message-ID
    assert first.data == second.data
    assert outbox.get(item_id).state == "sent"
    assert kinds_of_events(db) == ["outbox.sent.password-recipient"]


def test_crash_right_after_mark_sent_sends_nothing_more_after_restart(
    db: Database, outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    class DyingAfterCommit(OutboxStore):
        def mark_sent(self, item: OutboxItem, now: Any, detail: Any = None) -> bool:
            super().mark_sent(item, now, detail)
            raise SimulatedCrash(item.id)

    item_id = enqueue(outbox, clock)
    with pytest.raises(SimulatedCrash):
        once(DyingAfterCommit(db), hop_to(sink.port), clock)
    clock.advance(minutes=5)
    assert once(OutboxStore(db), hop_to(sink.port), clock) == 0
    assert len(sink.messages) == 1
    assert outbox.get(item_id).state == "sent"


def test_an_acceptance_a_locked_database_kept_from_its_record_is_recorded_later_not_resent(
    tmp_path: Path, clock: FakeClock, sink: RecordingSink
) -> None:
    """No crash, only a database locked by another process (an admin's shell) when mark_sent
    commits: the worker keeps the acceptance and records it once the lock is gone."""
    locks, sends = ExitStack(), []

    def lock_the_database_once(item: OutboxItem) -> None:
        sends.append(item.id)
        if len(sends) == 1:  # only in the first send's window
            locks.enter_context(locked_by_another_process(tmp_path / "short.sqlite3"))

    with Database(tmp_path / "short.sqlite3", busy_timeout_ms=200) as db:
        outbox = OutboxStore(db)
        item_id = enqueue(outbox, clock)
        hop = hop_to(sink.port)
        the_worker = worker(outbox, hop, clock, after_send=lock_the_database_once)

        async def two_rounds() -> tuple[int, int]:
            locked_round = await the_worker.run_once()
            locks.close()  # the other process lets go
            clock.advance(seconds=3)
            return locked_round, await the_worker.run_once()

        assert run(hop, two_rounds) == (0, 1)
        assert len(sink.messages) == 1, "accepted once, so sent once"
        assert outbox.get(item_id).state == "sent" and outbox.get(item_id).sealed is None
        assert kinds_of_events(db) == ["outbox.sent.password-recipient"]


def test_an_item_another_worker_already_sent_is_not_sent_again(
    outbox: OutboxStore, db: Database, clock: FakeClock, sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class StaleView(OutboxStore):
        """due() answers what it saw before the other worker got there."""

        def __init__(self, snapshot: list[OutboxItem]) -> None:
            super().__init__(db)
            self.snapshot = snapshot

        def due(self, now: Any, limit: int = 50) -> list[OutboxItem]:
            return self.snapshot

    item_id = enqueue(outbox, clock)
    stale = StaleView(outbox.due(clock()))
    assert once(outbox, hop_to(sink.port), clock) == 1  # worker A
    caplog.set_level(logging.INFO, logger="gateway.notify")
    assert once(stale, hop_to(sink.port), clock) == 0  # worker B, a moment late
    assert len(sink.messages) == 1
    assert "already sent" in caplog.text
    assert outbox.mark_sent(stale.snapshot[0], clock()) is False  # and the store refuses it too
    assert outbox.get(item_id).attempts == 1


def test_a_cancelled_item_is_not_sent(outbox: OutboxStore, clock: FakeClock, sink: RecordingSink) -> None:
    item_id = enqueue(outbox, clock)
    assert outbox.cancel(link_id="ln-1") == 1
    assert once(outbox, hop_to(sink.port), clock) == 0
    assert sink.messages == [] and outbox.get(item_id).state == "cancelled"


def test_a_database_error_stops_the_round_and_is_logged_not_raised(
    db: Database, outbox: OutboxStore, clock: FakeClock, sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    enqueue(outbox, clock)
    db.close()
    assert once(outbox, hop_to(sink.port), clock) == 0
    assert "database error, stopping this round" in caplog.text
    assert sink.messages == []


# -- the loop ----------------------------------------------------------------------------------


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_run_sends_at_once_when_woken_and_stops_cleanly(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    hop = hop_to(sink.port)

    async def steps() -> float:
        stop, wake = asyncio.Event(), asyncio.Event()
        w = worker(outbox, hop, clock, wake=wake)  # poll interval 60 s: only wake can do it
        task = asyncio.create_task(w.run(stop))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        enqueue(outbox, clock)
        wake.set()
        await eventually(lambda: len(sink.messages) == 1)
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.wait_for(task, timeout=2)
        return elapsed

    assert run(hop, steps) < 2


def test_run_wakes_for_the_earliest_due_time_before_the_poll_interval(
    outbox: OutboxStore, clock: FakeClock, sink: RecordingSink
) -> None:
    hop = hop_to(sink.port)
    enqueue(outbox, clock, due_in=timedelta(seconds=0.3))

    async def steps() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker(outbox, hop, clock).run(stop))
        await asyncio.sleep(0.05)
        assert sink.messages == []
        clock.advance(seconds=0.3)  # the loop sleeps ~0.3 s, not the 60 s poll interval
        await eventually(lambda: len(sink.messages) == 1, timeout=3)
        stop.set()
        await asyncio.wait_for(task, timeout=2)

    run(hop, steps)


def test_run_can_be_cancelled_while_waiting(outbox: OutboxStore, clock: FakeClock, sink: RecordingSink) -> None:
    hop = hop_to(sink.port)

    async def steps() -> None:
        task = asyncio.create_task(worker(outbox, hop, clock, wake=asyncio.Event()).run(asyncio.Event()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(asyncio.all_tasks()) == 1  # no waiter left behind

    run(hop, steps)
