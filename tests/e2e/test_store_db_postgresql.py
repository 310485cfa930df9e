"""The metadata store's tests (tests/unit/test_store_db.py) on PostgreSQL, plus what only
PostgreSQL has to prove about opening and migrating: the same test bodies, a `db` on a fresh
database of the private server, `count` read through a connection of its own. The tests about
SQLite itself (its pragmas, its files) are skipped, each saying why."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

import tests.unit.test_store_db as sqlite_tests
from gateway.config import PostgresUrl
from gateway.store.db import Database, MetadataError
from gateway.store.engines import DatabaseUnreachable
from tests.support.postgres import about_sqlite, database_tests, raw_rows, row_count
from tests.unit.test_store_db import T0, add_file, add_link, add_transfer

PG_BUNDLED = Path(__file__).resolve().parents[2] / "gateway" / "store" / "migrations" / "postgresql"
SHIPPED = sorted(int(p.name[:4]) for p in PG_BUNDLED.glob("[0-9][0-9][0-9][0-9]_*.sql"))


@pytest.fixture
def db(postgres_dsn: str):
    database = Database(PostgresUrl(postgres_dsn))
    yield database
    database.close()


@pytest.fixture(autouse=True)
def counted_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQLite module's count() opens the file; here it asks the server."""
    monkeypatch.setattr(sqlite_tests, "count", row_count)


globals().update(database_tests(sqlite_tests, "db", "tmp_path"))  # the same tests, on PostgreSQL
test_pragmas_are_wal_normal_sync_and_foreign_keys = about_sqlite("its PRAGMAs")
test_database_file_is_private = about_sqlite("the mode of its file")
test_wal_and_normal_sync_hold_again_when_an_existing_database_is_reopened = about_sqlite(
    "WAL and synchronous, which it keeps per file and per connection")
test_full_database_is_reported_as_disk_full_and_recovers_when_space_returns = about_sqlite(
    "its max_page_count; PostgreSQL's disk-full code is classified in tests/unit/"
    "test_store_engines.py")
test_database_files_never_hold_a_token_or_password_in_clear = about_sqlite(
    "the bytes of its files")
test_purged_wrapped_keys_leave_the_database_files = about_sqlite(
    "secure_delete and its WAL checkpoint (PostgreSQL keeps dead rows until VACUUM: "
    "docs/postgresql.md)")
# These open a SQLite file (or connection) of their own: their PostgreSQL versions follow.
_TWIN = "a SQLite file of its own; its PostgreSQL version is {}_on_postgresql"
test_migrations_apply_once_and_reopening_is_a_no_op = about_sqlite(
    _TWIN.format("test_migrations_apply_once_and_reopening_is_a_no_op"))
test_new_migration_is_applied_on_the_next_open = about_sqlite(
    _TWIN.format("test_new_migration_is_applied_on_the_next_open"))
test_failing_migration_rolls_back_entirely = about_sqlite(
    _TWIN.format("test_failing_migration_rolls_back_entirely"))
test_schema_newer_than_the_program_is_refused = about_sqlite(
    _TWIN.format("test_schema_newer_than_the_program_is_refused"))
test_unopenable_path_is_a_metadata_error = about_sqlite(
    "a path; its PostgreSQL version is test_an_unreachable_server_is_a_one_line_error_naming_it")
test_closed_database_raises_metadata_error = about_sqlite(
    _TWIN.format("test_closed_database_raises_metadata_error"))
test_events_cannot_be_updated_or_deleted_even_from_outside = about_sqlite(
    _TWIN.format("test_events_cannot_be_updated_or_deleted_even_from_outside"))


# -- opening and migrating, on PostgreSQL -----------------------------------------------


def copy_bundled(directory: Path) -> Path:
    directory.mkdir()
    for sql in PG_BUNDLED.glob("*.sql"):
        (directory / sql.name).write_text(sql.read_text(encoding="utf-8"), encoding="utf-8")
    return directory


def test_migrations_apply_once_and_reopening_is_a_no_op_on_postgresql(postgres_dsn) -> None:
    url = PostgresUrl(postgres_dsn)
    with Database(url) as first:
        applied = [tuple(row) for row in first._query("SELECT * FROM schema_migrations")]
        add_transfer(first)
    with Database(url) as second:
        assert [tuple(r) for r in second._query("SELECT * FROM schema_migrations")] == applied
        assert second.transfer("t1") is not None
    assert [row[0] for row in applied] == SHIPPED


def test_new_migration_is_applied_on_the_next_open_on_postgresql(postgres_dsn, tmp_path) -> None:
    url = PostgresUrl(postgres_dsn)
    migrations = copy_bundled(tmp_path / "migrations")
    Database(url, migrations=migrations).close()
    (migrations / "0090_add_probe.sql").write_text(
        "-- a ';' inside a comment, and a '?' and a '%'\n"
        "CREATE TABLE probe (v TEXT);\n"
        "INSERT INTO probe VALUES ('a;b?%');\n"
        "CREATE FUNCTION probe_guard() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN PERFORM 1; RETURN old; END $$;\n"
        "INSERT INTO probe VALUES ('last, without a semicolon') -- and a closing comment"
    )
    with Database(url, migrations=migrations) as db:
        assert [r[0] for r in db._query("SELECT version FROM schema_migrations")] == [*SHIPPED, 90]
        values = [row[0] for row in db._query("SELECT v FROM probe ORDER BY v")]
        assert values == ["a;b?%", "last, without a semicolon"]


def test_failing_migration_rolls_back_entirely_on_postgresql(postgres_dsn, tmp_path) -> None:
    migrations = copy_bundled(tmp_path / "migrations")
    (migrations / "0090_broken.sql").write_text(
        "CREATE TABLE half_done (v TEXT);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    with pytest.raises(MetadataError):
        Database(PostgresUrl(postgres_dsn), migrations=migrations)
    tables = {row[0] for row in raw_rows(
        postgres_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    versions = [row[0] for row in raw_rows(
        postgres_dsn, "SELECT version FROM schema_migrations ORDER BY version")]
    assert "half_done" not in tables and "transfers" in tables
    assert versions == SHIPPED


def test_schema_newer_than_the_program_is_refused_on_postgresql(postgres_dsn) -> None:
    Database(PostgresUrl(postgres_dsn)).close()
    raw_rows(postgres_dsn, "INSERT INTO schema_migrations VALUES (99, '0099_future.sql', 'x')")
    with pytest.raises(MetadataError, match="newer"):
        Database(PostgresUrl(postgres_dsn))


def test_two_processes_starting_on_an_empty_database_migrate_it_once(postgres_dsn) -> None:
    """Two gateways' first start at the same moment: one migrates, the other waits on the
    advisory lock and then finds nothing to do (no duplicate table, no error)."""
    url = PostgresUrl(postgres_dsn)
    outcomes: list[object] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            Database(url).close()
            outcomes.append("ok")
        except BaseException as error:  # reported below
            outcomes.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["ok"] * 4
    versions = [row[0] for row in raw_rows(postgres_dsn, "SELECT version FROM schema_migrations")]
    assert sorted(versions) == SHIPPED


def test_an_unreachable_server_is_a_one_line_error_naming_it(closed_port) -> None:
    url = PostgresUrl(f"postgresql://gw:secret@127.0.0.1:{closed_port}/gateway")
    with pytest.raises(DatabaseUnreachable) as unreachable:
        Database(url)
    message = str(unreachable.value)
    named = f"postgresql://gw:***@127.0.0.1:{closed_port}/gateway"
    assert message.startswith(f"{named}: cannot connect")
    assert "secret" not in message and "\n" not in message


def test_closed_database_raises_metadata_error_on_postgresql(postgres_dsn) -> None:
    db = Database(PostgresUrl(postgres_dsn))
    db.close()
    with pytest.raises(MetadataError):
        db.transfer("t1")


def test_events_cannot_be_updated_or_deleted_even_from_outside_on_postgresql(db) -> None:
    db.append_event("stored", T0, transfer_id="t1")
    with pytest.raises(MetadataError, match="append-only"):
        db._write("UPDATE events SET kind = 'forged'")
    with pytest.raises(MetadataError, match="append-only"):
        db._write("DELETE FROM events")
    dsn = db.location.url
    for statement in ("DELETE FROM events", "UPDATE events SET kind = 'forged'",
                      "TRUNCATE events"):  # the triggers live in the database, not in our code
        with pytest.raises(psycopg.IntegrityError, match="append-only"):
            raw_rows(dsn, statement)
    assert [e.kind for e in db.events()] == ["stored"]


def test_files_and_links_of_one_transfer_come_back_whole_from_another_thread(db) -> None:
    """A transaction's connection is its thread's: another thread's reads see nothing of it
    until the commit, then all of it."""
    seen: list[int] = []

    def count_files() -> None:
        seen.append(len(db.files_of("t1")))

    with db.transaction():
        add_transfer(db)
        add_file(db, "f1")
        add_link(db, "l1")
        reader = threading.Thread(target=count_files)
        reader.start()
        reader.join()
    count_files()
    assert seen == [0, 1]
