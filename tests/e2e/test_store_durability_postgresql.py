"""Durability on PostgreSQL (the SQLite side: tests/unit/test_durability.py). Every commit is
durable when it returns, whatever the server's or the database's default: the store's connections
set synchronous_commit=on themselves, so its barrier has nothing to wait for and the relay's
deferred commits are durable already."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from gateway.config import PostgresUrl
from gateway.store.db import Database
from gateway.store.durability import SyncedAtCommit, deferring_commits
from tests.support.postgres import raw_rows

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def lax_database(postgres_dsn: str) -> str:
    """A database whose default is what a careless administrator might set."""
    name = postgres_dsn.rsplit("/", 1)[1]
    raw_rows(postgres_dsn, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    return postgres_dsn


def test_the_stores_connections_commit_synchronously_whatever_the_databases_default(
    lax_database: str,
) -> None:
    assert raw_rows(lax_database, "SHOW synchronous_commit") == [("off",)]
    with Database(PostgresUrl(lax_database)) as db:
        assert db.query("SHOW synchronous_commit")[0][0] == "on"  # autocommit, pooled
        with db.transaction():
            assert db.query("SHOW synchronous_commit")[0][0] == "on"  # a transaction's own


def test_a_relays_deferred_commits_are_durable_at_once_so_nothing_waits(postgres_dsn) -> None:
    async def relay_like(db: Database) -> int:
        with deferring_commits() as deferred:
            await asyncio.to_thread(db.append_event, "probe", NOW)
            await db.barrier.flush_deferred()  # what the relay awaits before its 250
            return deferred.last

    with Database(PostgresUrl(postgres_dsn)) as db:
        assert isinstance(db.barrier, SyncedAtCommit)
        assert asyncio.run(relay_like(db)) == 0, "no mark: there is no flush to wait for"
        assert raw_rows(postgres_dsn, "SELECT kind FROM events") == [("probe",)]
