"""The password mail's lookup (tests/unit/test_unlock_waiting.py) on PostgreSQL: found in one
query that starts from the recipients' links (links_by_recipient), however many transfers the
sender has pending for others. SQLite is told the join order (CROSS JOIN); PostgreSQL's planner
chooses it from the statistics."""

from __future__ import annotations

import pytest

from gateway.config import PostgresUrl
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
def db(postgres_dsn: str):
    with Database(PostgresUrl(postgres_dsn)) as database:
        yield database


def queries_of(db: Database, call) -> list[tuple[str, tuple]]:
    """The statements (and parameters) `call` runs through the store."""
    seen: list[tuple[str, tuple]] = []
    plain = db.query

    def recording(sql, params=()):
        seen.append((sql, tuple(params)))
        return plain(sql, params)

    db.query = recording
    try:
        call()
    finally:
        del db.query
    return seen


def test_the_recipients_waiting_transfers_are_found_in_one_indexed_query_on_postgresql(db):
    fill_waiting_transfers(db)
    db.query("ANALYZE")  # as autovacuum would have by now: the planner's statistics
    found: list = []
    statements = queries_of(db, lambda: found.extend(look_up_waiting(db)))
    assert found == WAITING
    assert len(statements) == 1, statements
    sql, params = statements[0]
    plan = "\n".join(row[0] for row in db.query("EXPLAIN " + sql, params))
    # from the recipients' links to their transfers; never the sender's transfers walked
    assert "links_by_recipient" in plan, plan
    assert "transfers_by_sender" not in plan, plan
    assert "Seq Scan on links" not in plan and "Seq Scan on transfers" not in plan, plan


def test_no_recipient_no_query_on_postgresql(db):
    assert queries_of(db, lambda: UnlockStore(db).waiting_for_password(SENDER, (), T0, T0)) == []
