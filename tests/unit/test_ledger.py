"""The ledger the workers of one `serve` count with: every limit holds for all rows together,
and a row cleared (its worker gone) gives back everything it held."""

from __future__ import annotations

from gateway.ledger import (
    CLIENT_BUCKETS,
    SharedDataBudget,
    SharedRelayingNow,
    SharedSessionSlots,
    WorkerLedger,
)


def test_the_budget_is_one_for_all_workers():
    with WorkerLedger(4) as ledger:
        _one_budget(ledger)


def _one_budget(ledger: WorkerLedger) -> None:
    first, second = (SharedDataBudget(ledger.row(i), limit=100) for i in (0, 1))
    assert first.take(60)
    assert not second.take(50), "the second worker sees what the first holds"
    assert second.take(40)
    assert first.used == second.used == 100
    first.give_back(60)
    assert second.take(60)


def test_session_caps_count_every_worker():
    with WorkerLedger(4) as ledger:
        _caps_for_all(ledger)


def _caps_for_all(ledger: WorkerLedger) -> None:
    workers = [SharedSessionSlots(ledger.row(i), max_sessions=5, max_per_client=2) for i in (0, 1)]
    assert workers[0].admit("192.0.2.1")
    assert workers[1].admit("192.0.2.1")
    assert not workers[0].admit("192.0.2.1") and not workers[1].admit("192.0.2.1")
    workers[0].release("192.0.2.1")
    assert workers[1].admit("192.0.2.1")
    for n in range(3):
        assert workers[n % 2].admit(f"198.51.100.{n}")
    assert not workers[0].admit("203.0.113.9"), "five sessions open in all"
    assert ledger.totals() == (0, 5)


def test_a_cleared_row_gives_back_what_its_worker_held():
    with WorkerLedger(2) as ledger:
        _cleared(ledger)


def _cleared(ledger: WorkerLedger) -> None:
    dead = ledger.row(0)
    SharedDataBudget(dead, limit=100).take(100)
    SharedSessionSlots(dead, max_sessions=1, max_per_client=1).admit("192.0.2.1")
    alive_budget = SharedDataBudget(ledger.row(1), limit=100)
    alive_slots = SharedSessionSlots(ledger.row(1), max_sessions=1, max_per_client=1)
    assert not alive_budget.take(1) and not alive_slots.admit("192.0.2.1")
    ledger.clear(0)
    assert alive_budget.take(100) and alive_slots.admit("192.0.2.1")


def test_client_buckets_are_keyed_per_start():
    addresses = [f"10.0.{n // 256}.{n % 256}" for n in range(64)]
    with WorkerLedger(1) as one, WorkerLedger(1) as other:
        assert all(0 <= one.bucket(a) < CLIENT_BUCKETS for a in addresses)
        assert [one.bucket(a) for a in addresses] != [other.bucket(a) for a in addresses]


def test_a_message_relayed_by_one_worker_is_seen_by_all():
    with WorkerLedger(3) as ledger:
        first, second = SharedRelayingNow(ledger.row(0)), SharedRelayingNow(ledger.row(1))
        assert first.claim("fp-a")
        assert not second.claim("fp-a") and not first.claim("fp-a")
        assert second.claim("fp-b")
        first.release("fp-a")
        assert second.claim("fp-a")
        ledger.clear(1)  # its worker died: what it was relaying is no longer being relayed
        assert first.claim("fp-a") and first.claim("fp-b")
