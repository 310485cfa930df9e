"""OutboxStore on a real SQLite database: dedupe, due order, cancel, and the state guards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.store.db import Database
from gateway.store.outbox import OutboxStore

T0 = datetime(2026, 11, 26, 0, 12, 40, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "gateway.sqlite3") as database:
        yield database


@pytest.fixture
def outbox(db: Database) -> OutboxStore:
    return OutboxStore(db)


def add(outbox: OutboxStore, kind: str = "receipt", *, due_in: timedelta = timedelta(0),
        link_id: str | None = "ln-1", transfer_id: str | None = "tr-1", dedupe_key: str | None = None,
        sealed: bytes | None = b"sealed-secret") -> str:
    item_id = outbox.enqueue(kind=kind, now=T0, due_at=T0 + due_in, payload={"名前": "値"},
                             sealed=sealed, link_id=link_id, transfer_id=transfer_id,
                             dedupe_key=dedupe_key)
    assert item_id is not None
    return item_id


def test_enqueue_with_an_existing_dedupe_key_adds_nothing(outbox: OutboxStore) -> None:
    first = add(outbox, dedupe_key="receipt:tr-1")
    assert outbox.enqueue(kind="receipt", now=T0, due_at=T0, dedupe_key="receipt:tr-1") is None
    assert [item.id for item in outbox.items()] == [first]
    item = outbox.get(first)
    assert (item.payload, item.state, item.attempts, item.created_at) == ({"名前": "値"}, "pending", 0, T0)


def test_items_without_dedupe_key_never_collide(outbox: OutboxStore) -> None:
    add(outbox)
    add(outbox)
    assert len(outbox.items()) == 2


def test_due_lists_pending_items_due_by_now_in_due_order(outbox: OutboxStore) -> None:
    later = add(outbox, due_in=timedelta(minutes=3))
    sooner = add(outbox, due_in=timedelta(minutes=1))
    future = add(outbox, due_in=timedelta(hours=1))
    done = add(outbox)
    assert outbox.mark_sent(outbox.get(done), T0)
    now = T0 + timedelta(minutes=5)
    assert [item.id for item in outbox.due(now)] == [sooner, later]
    assert [item.id for item in outbox.due(now, limit=1)] == [sooner]
    assert outbox.next_due_at() == T0 + timedelta(minutes=1)
    assert future not in [item.id for item in outbox.due(now)]


def test_next_due_at_is_none_when_nothing_is_pending(outbox: OutboxStore) -> None:
    assert outbox.next_due_at() is None
    item_id = add(outbox)
    outbox.mark_gave_up(outbox.get(item_id), T0, "x")
    assert outbox.next_due_at() is None


def test_mark_sent_wipes_the_secret_records_an_event_and_only_once(db: Database, outbox: OutboxStore) -> None:
    item = outbox.get(add(outbox))
    assert outbox.mark_sent(item, T0, {"code": 250}) is True
    assert outbox.mark_sent(item, T0) is False
    sent = outbox.get(item.id)
    assert (sent.state, sent.sealed, sent.sent_at, sent.attempts) == ("sent", None, T0, 1)
    [event] = db.events("tr-1")
    assert (event.kind, event.detail) == ("outbox.sent.receipt", {"code": 250, "item": item.id})


def test_mark_retry_counts_the_attempt_and_moves_due_at(outbox: OutboxStore) -> None:
    item = outbox.get(add(outbox))
    outbox.mark_retry(item, T0 + timedelta(minutes=1), "451 " + "x" * 1000)
    retried = outbox.get(item.id)
    assert (retried.attempts, retried.due_at, retried.state) == (1, T0 + timedelta(minutes=1), "pending")
    assert len(retried.last_error) == 500 and retried.sealed == b"sealed-secret"


def test_mark_gave_up_wipes_the_secret_audits_and_only_once(db: Database, outbox: OutboxStore) -> None:
    item = outbox.get(add(outbox))
    assert outbox.mark_gave_up(item, T0, "550 no") is True
    assert outbox.mark_gave_up(item, T0, "550 no") is False
    gave_up = outbox.get(item.id)
    assert (gave_up.state, gave_up.sealed, gave_up.last_error) == ("gave_up", None, "550 no")
    assert [e.kind for e in db.events()] == ["outbox.gave_up.receipt"]


def test_cancel_by_link_and_kind_leaves_the_others(outbox: OutboxStore) -> None:
    password = add(outbox, "password-recipient", link_id="ln-1")
    otp = add(outbox, "otp", link_id="ln-1")
    other_link = add(outbox, "password-recipient", link_id="ln-2")
    assert outbox.cancel(link_id="ln-1", kinds=("password-recipient",)) == 1
    states = {item.id: (item.state, item.sealed) for item in outbox.items()}
    assert states[password] == ("cancelled", None)
    assert states[otp][0] == states[other_link][0] == "pending"


def test_cancel_by_transfer_touches_only_pending_items(outbox: OutboxStore) -> None:
    sent = outbox.get(add(outbox, transfer_id="tr-1"))
    outbox.mark_sent(sent, T0)
    pending = add(outbox, transfer_id="tr-1")
    elsewhere = add(outbox, transfer_id="tr-2")
    assert outbox.cancel(transfer_id="tr-1") == 1
    assert [outbox.get(i).state for i in (sent.id, pending, elsewhere)] == ["sent", "cancelled", "pending"]


def test_cancel_needs_exactly_one_of_link_or_transfer(outbox: OutboxStore) -> None:
    with pytest.raises(ValueError):
        outbox.cancel()
    with pytest.raises(ValueError):
        outbox.cancel(link_id="ln-1", transfer_id="tr-1")


def test_a_cancelled_item_cannot_be_marked_sent_or_given_up(db: Database, outbox: OutboxStore) -> None:
    item = outbox.get(add(outbox))
    outbox.cancel(link_id="ln-1")
    assert outbox.mark_sent(item, T0) is False
    assert outbox.mark_gave_up(item, T0, "late") is False
    outbox.mark_retry(item, T0 + timedelta(hours=1), "late")
    cancelled = outbox.get(item.id)
    assert (cancelled.state, cancelled.attempts, cancelled.sent_at) == ("cancelled", 0, None)
    assert db.events() == []
    assert outbox.due(T0 + timedelta(days=1)) == []
