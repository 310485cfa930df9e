"""A link's budget of one-time codes in the store: spent, locked once, unlocked by the sender."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.store.controls import CodeBudgetSpent, CodesLocked, ControlsStore
from gateway.store.db import Database

NOW = datetime(2026, 11, 26, 1, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def add_active_link(db: Database) -> None:
    """Transfer t1 with its one active link l1, which the tests spend codes on."""
    with db.transaction():
        db.insert_transfer(
            id="t1", fingerprint="fp", message_id="<m@city>", sender="somu@city.example",
            department="somu", subject="s", created_at=NOW, expires_at=NOW + timedelta(days=7),
            password_channel="none", locale="ja", state="active",
        )
        db.insert_link(id="l1", transfer_id="t1", recipient="r@x.example", token_hash="h1",
                       created_at=NOW, state="active", activated_at=NOW)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Database, ControlsStore]]:
    db = Database(tmp_path / "meta.sqlite3")
    add_active_link(db)
    yield db, ControlsStore(db)
    db.close()


def test_a_link_is_locked_once_however_many_callers_find_its_budget_spent(store):
    _db, controls = store
    controls.issue_otp("l1", "mac", NOW, NOW + 10 * MINUTE, MINUTE, max_sends=1)
    with pytest.raises(CodeBudgetSpent):
        controls.issue_otp("l1", "mac2", NOW + MINUTE, NOW + 11 * MINUTE, MINUTE, max_sends=1)
    # Two requests that both saw the budget spent: only the first locks (and tells the sender).
    assert controls.lock_otp("l1", NOW + MINUTE, "sends") is True
    assert controls.lock_otp("l1", NOW + 2 * MINUTE, "sends") is False
    state = controls.otp_state("l1")
    assert (state.locked_at, state.locked_reason, state.code_hash) == (NOW + MINUTE, "sends", "")
    with pytest.raises(CodesLocked):
        controls.issue_otp("l1", "mac3", NOW + 3 * MINUTE, NOW + 13 * MINUTE, MINUTE, max_sends=9)
    assert controls.settle_otp("l1", "mac", NOW, 5, 20) == "link_locked"


def test_unlocking_needs_the_links_own_transfer_and_starts_the_budget_again(store):
    db, controls = store
    controls.issue_otp("l1", "mac", NOW, NOW + 10 * MINUTE, MINUTE, max_sends=5)
    assert controls.settle_otp("l1", "wrong", NOW, 5, 1) == "budget_spent"
    assert controls.unlock_otp("t-other", "l1", NOW, "sender") is False
    assert controls.unlock_otp("t1", "l1", NOW, "sender") is True
    assert controls.unlock_otp("t1", "l1", NOW, "sender") is False  # nothing left to unlock
    state = controls.otp_state("l1")
    assert (state.locked_at, state.sends, state.total_failures, state.failures) == (None, 0, 0, 0)
    assert [e.kind for e in db.events()] == ["otp.link_unlocked"]
