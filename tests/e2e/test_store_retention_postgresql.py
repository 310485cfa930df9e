"""Retention (tests/unit/test_ops_retention.py) on PostgreSQL: the same steady stream through the
real relay, outbox worker and purge, the store on a fresh database of the private server. The
database's size is told by its tables rewritten compactly (VACUUM FULL), as SQLite's by VACUUM
INTO a copy. The tests that read the SQLite file themselves have their PostgreSQL versions here."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

import tests.unit.test_ops_retention as sqlite_tests
from gateway.cli import main as cli_main
from gateway.config import PostgresUrl, build_config
from gateway.ops.housekeeping import PURGING_ELSEWHERE
from gateway.store.db import Database
from tests.support.clock import FakeClock
from tests.support.postgres import about_sqlite, database_tests, opening, raw_rows
from tests.unit.test_ops_retention import (
    DAY,
    MASTER_KEY,
    PARTNERS,
    TABLES,
    a_transfer,
    old_and_young_records,
    remaining,
    remaining_kinds,
    retention_config,
)

PG_BUNDLED = Path(__file__).resolve().parents[2] / "gateway" / "store" / "migrations" / "postgresql"

globals().update(database_tests(sqlite_tests, "tmp_path", "stream"))
_TWIN = "reads the SQLite file itself; its PostgreSQL version is {}_on_postgresql"
test_the_audit_trail_stays_append_only_inside_its_retention = about_sqlite(
    _TWIN.format("test_the_audit_trail_stays_append_only_inside_its_retention"))
test_an_upgrade_ends_the_active_links_of_transfers_purged_before_it = about_sqlite(
    _TWIN.format("test_an_upgrade_ends_the_active_links_of_transfers_purged_before_it"))
test_the_purge_command_applies_the_configured_retention = about_sqlite(
    _TWIN.format("test_the_purge_command_applies_the_configured_retention"))


def pg_raw(stream, sql: str, params: tuple = ()) -> list[tuple]:
    return raw_rows(stream.db.location.url, sql.replace("?", "%s"), params)


def pg_compacted_size(stream) -> int:
    """What the records take: the tables (and their indexes) rewritten without dead rows."""
    url = stream.db.location.url
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM FULL")
        sizes = [connection.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
                 for table in TABLES]
    return sum(sizes)


@pytest.fixture(autouse=True)
def on_postgresql(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store the SQLite module opens, through its config or directly, is this database."""
    def pg_retention_config(tmp_path: Path, retention: dict[str, str] = sqlite_tests.RETENTION):
        config = retention_config(tmp_path, retention)
        return replace(config, storage=replace(config.storage, database=PostgresUrl(postgres_dsn)))

    monkeypatch.setattr(sqlite_tests, "retention_config", pg_retention_config)
    monkeypatch.setattr(sqlite_tests, "Database", opening(postgres_dsn))
    monkeypatch.setattr(sqlite_tests.Stream, "raw", pg_raw)
    monkeypatch.setattr(sqlite_tests.Stream, "compacted_size", pg_compacted_size)


@pytest.fixture
def stream(tmp_path: Path, on_postgresql: None):
    opened = sqlite_tests.Stream(tmp_path)
    yield opened
    opened.db.close()


def test_the_audit_trail_stays_append_only_inside_its_retention_on_postgresql(
    tmp_path, postgres_dsn,
):
    config = sqlite_tests.retention_config(tmp_path)
    sqlite_tests.purge_one_of_two_events(config)
    # the guard lives in the database, whoever connects
    for statement, refusal in (
        ("DELETE FROM events", "append-only"),
        ("UPDATE audit_horizon SET forget_before = ''", "only moves forward"),
        ("UPDATE events SET kind = 'forged'", "append-only"),
    ):
        with pytest.raises(psycopg.IntegrityError, match=refusal):
            raw_rows(postgres_dsn, statement)
    assert remaining_kinds(config) == ["relay.test"]


def test_an_upgrade_ends_the_active_links_of_transfers_purged_before_it_on_postgresql(
    tmp_path, postgres_dsn,
):
    before = tmp_path / "before-0007"
    before.mkdir()
    for script in PG_BUNDLED.glob("000[1-6]_*.sql"):
        (before / script.name).write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    now = FakeClock()()
    url = PostgresUrl(postgres_dsn)
    with Database(url, migrations=before) as old:
        for transfer_id, state in (("purged", "purged"), ("live", "active")):
            a_transfer(old, transfer_id, state, now + DAY)
            old.insert_link(id=f"{transfer_id}-l", transfer_id=transfer_id,
                            recipient=PARTNERS[0], token_hash=f"hash-{transfer_id}",
                            created_at=now, state="active")
    with Database(url) as upgraded:
        assert upgraded.link("purged-l").state == "expired"
        assert upgraded.link("live-l").state == "active"


def purge_command_setup(tmp_path, monkeypatch, postgres_dsn: str):
    """A config file on this database and its config, old and young records in the store."""
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        '[gateway]\ninternal_domains = ["city.example.lg.jp"]\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase = "{postgres_dsn}"\n'
        '[retention]\ndeliveries = "3d"\noutbox = "3d"\naudit = "10d"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("PPAP_GATEWAY_MASTER_KEY", base64.b64encode(MASTER_KEY).decode())
    config = build_config({
        "gateway": {"internal_domains": ["city.example.lg.jp"]},
        "storage": {"data_dir": str(tmp_path / "data"), "database": postgres_dsn},
    }, environ={})
    old_and_young_records(config, datetime.now(timezone.utc))
    return config_path, config


def test_the_purge_command_applies_the_configured_retention_on_postgresql(
    tmp_path, capsys, monkeypatch, postgres_dsn,
):
    config_path, config = purge_command_setup(tmp_path, monkeypatch, postgres_dsn)

    assert cli_main(["purge", "--config", str(config_path)]) == 0

    assert capsys.readouterr().out.strip() == (
        "purged 0 transfers, 0 blobs, 0 B freed, 0 orphans;"
        " past retention forgot 1 delivery record, 1 audit event"
    )
    assert remaining(config) == ({"fp-young"}, ["young"])


def test_the_purge_command_does_nothing_while_another_node_purges_and_says_so(
    tmp_path, capsys, monkeypatch, postgres_dsn,
):
    """A cron job's purge beside a node's timer purge: exit 0 (the store is being purged), one
    line saying why nothing was done, and not a record touched."""
    config_path, config = purge_command_setup(tmp_path, monkeypatch, postgres_dsn)

    with Database(PostgresUrl(postgres_dsn)) as node, node.exclusive_run("housekeeping") as ours:
        assert ours
        assert cli_main(["purge", "--config", str(config_path)]) == 0
    assert capsys.readouterr().out.strip() == PURGING_ELSEWHERE
    assert remaining(config) == ({"fp-old", "fp-young"}, ["old", "young"])

    assert cli_main(["purge", "--config", str(config_path)]) == 0  # let go: this one runs
    assert "forgot 1 delivery record, 1 audit event" in capsys.readouterr().out
    assert remaining(config) == ({"fp-young"}, ["young"])
