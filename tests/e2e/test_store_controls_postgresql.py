"""A link's budget of one-time codes (tests/unit/test_store_controls.py) on PostgreSQL: the same
test bodies, on a fresh database of the private server holding the same transfer and link."""

from __future__ import annotations

import pytest

import tests.unit.test_store_controls as sqlite_tests
from gateway.config import PostgresUrl
from gateway.store.controls import ControlsStore
from gateway.store.db import Database
from tests.support.postgres import database_tests
from tests.unit.test_store_controls import add_active_link

globals().update(database_tests(sqlite_tests, "store"))


@pytest.fixture
def store(postgres_dsn: str):
    db = Database(PostgresUrl(postgres_dsn))
    add_active_link(db)
    yield db, ControlsStore(db)
    db.close()
