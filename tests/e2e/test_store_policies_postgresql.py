"""The policy snapshot kept with a transfer (tests/unit/test_store_policies.py) on PostgreSQL:
the same test bodies, their Database opening a fresh database of the private server; the
upgrade from before migration 0005 done again with PostgreSQL's migrations and a connection of
its own."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import tests.unit.test_store_policies as sqlite_tests
from gateway.config import Policy, PostgresUrl
from gateway.store.db import Database
from gateway.store.policies import policy_to_json, stored_policy
from tests.support.postgres import about_sqlite, database_tests, opening, raw_rows
from tests.unit.test_store_policies import add_transfer

PG_BUNDLED = Path(__file__).resolve().parents[2] / "gateway" / "store" / "migrations" / "postgresql"

globals().update(database_tests(sqlite_tests, "tmp_path"))
test_transfers_from_before_the_migration_have_no_snapshot = about_sqlite(
    "sqlite3 connections of its own; its PostgreSQL version is "
    "test_transfers_from_before_the_migration_have_no_snapshot_on_postgresql")


@pytest.fixture(autouse=True)
def on_postgresql(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_tests, "Database", opening(postgres_dsn))


def test_transfers_from_before_the_migration_have_no_snapshot_on_postgresql(
    postgres_dsn: str, tmp_path: Path,
) -> None:
    old = tmp_path / "old-migrations"
    old.mkdir()
    for script in sorted(PG_BUNDLED.glob("000[1-4]_*.sql")):
        shutil.copy(script, old / script.name)
    url = PostgresUrl(postgres_dsn)
    Database(url, migrations=old).close()
    raw_rows(  # the row as the old program wrote it
        postgres_dsn,
        "INSERT INTO transfers (id, fingerprint, message_id, sender, department, subject,"
        " created_at, expires_at, state, password_channel, locale) VALUES"
        " ('old', 'fp', '<m@example.jp>', 'taro@example.jp', 'sales', 's',"
        " '2026-04-01T09:00:00.000000Z', '2026-04-08T09:00:00.000000Z', 'active', 'none', 'ja')",
    )
    with Database(url) as db:
        row = db.transfer("old")
        assert row is not None and row.policy is None
        assert stored_policy(row) is None
        add_transfer(db, "new", policy_to_json(replace(Policy(), password_mail="pass")))
        assert stored_policy(db.transfer("new")).password_mail == "pass"
    versions = [r[0] for r in raw_rows(postgres_dsn, "SELECT version FROM schema_migrations"
                                       " ORDER BY version")]
    assert 5 in versions and versions[-1] == len(list(PG_BUNDLED.glob("*.sql")))
