"""The outbox's tests (tests/unit/test_store_outbox.py) on PostgreSQL: the same test bodies, the
`db` on a fresh database of the private server."""

from __future__ import annotations

import pytest

import tests.unit.test_store_outbox as sqlite_tests
from gateway.config import PostgresUrl
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from tests.support.postgres import database_tests

globals().update(database_tests(sqlite_tests, "db", "outbox"))


@pytest.fixture
def db(postgres_dsn: str):
    with Database(PostgresUrl(postgres_dsn)) as database:
        yield database


@pytest.fixture
def outbox(db: Database) -> OutboxStore:
    return OutboxStore(db)
