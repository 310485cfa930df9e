"""A link's budget of one-time codes (tests/unit/test_store_controls.py) on PostgreSQL: the same
test bodies, on a fresh database of the private server holding the same transfer and link."""

from __future__ import annotations

from datetime import timedelta

import pytest

import tests.unit.test_store_controls as sqlite_tests
from gateway.config import PostgresUrl
from gateway.store.controls import ControlsStore
from gateway.store.db import Database
from tests.support.postgres import database_tests
from tests.unit.test_store_controls import NOW

globals().update(database_tests(sqlite_tests, "store"))


@pytest.fixture
def store(postgres_dsn: str):
    db = Database(PostgresUrl(postgres_dsn))
    with db.transaction():
        db.insert_transfer(
            id="t1", fingerprint="fp", message_id="<m@city>", sender="somu@city.example",
            department="somu", subject="s", created_at=NOW, expires_at=NOW + timedelta(days=7),
            password_channel="none", locale="ja", state="active",
        )
        db.insert_link(id="l1", transfer_id="t1", recipient="r@x.example", token_hash="h1",
                       created_at=NOW, state="active", activated_at=NOW)
    yield db, ControlsStore(db)
    db.close()
