"""A mail without attachments asks whether it is the password mail of a transfer its sender sent
to the same recipients. The answer is one indexed query whatever the sender has pending for
others (issue 14 point 2: 1,242 such transfers made a 2 KB mail cost 44-96 ms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store.db import Database
from gateway.store.unlocks import UnlockStore
from tests.support.unlock_waiting import (
    SENDER,
    T0,
    WAITING,
    fill_waiting_transfers,
    look_up_waiting,
)


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "meta.db")
    yield database
    database.close()


def statements_of(db: Database, call) -> list[str]:
    seen: list[str] = []
    db._conn.set_trace_callback(seen.append)  # noqa: SLF001 - the connection the store uses
    try:
        call()
    finally:
        db._conn.set_trace_callback(None)  # noqa: SLF001
    return seen


def test_the_recipients_waiting_transfers_are_found_in_one_query_whatever_else_is_pending(db):
    fill_waiting_transfers(db)
    found: list = []
    statements = statements_of(db, lambda: found.extend(look_up_waiting(db)))
    assert found == WAITING
    assert len(statements) == 1, statements
    plan = " ".join(str(row[-1]) for row in db.query("EXPLAIN QUERY PLAN " + statements[0]))
    # from the recipients' links to their transfers; never the sender's transfers walked
    assert plan.startswith("SEARCH l USING INDEX links_by_recipient"), plan
    assert "transfers_by_sender" not in plan, plan


def test_no_recipient_no_query(db):
    assert statements_of(db, lambda: UnlockStore(db).waiting_for_password(
        SENDER, (), T0, T0)) == []
