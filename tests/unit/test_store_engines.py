"""What differs between the store's engines, without a server: `storage.database` read as a file
or a PostgreSQL URL (shown without its password), the `?` placeholders as psycopg's, rows read
by position and by name, and each engine's "disk full" told apart from other trouble, so the
reply is 452 4.3.1 rather than 451."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from gateway.config import ConfigError, PostgresUrl, build_config
from gateway.replies import DISK_FULL, STORAGE_UNAVAILABLE, reply_for_exception
from gateway.store.engines import (
    MetadataError,
    Row,
    _pg_cause,
    _pg_failure,
    _pyformat,
    is_disk_full,
    is_engine_error,
)


def database(value: str):
    return build_config({"storage": {"database": value}}, environ={}).storage.database


@pytest.mark.parametrize("url", [
    "postgresql://gw:s3cret@db1.example.lg.jp:5432/gateway",
    "postgres://gw@db1/gateway?sslmode=verify-full",
    "postgresql:///gateway?host=/run/postgresql",
])
def test_a_postgresql_url_is_the_store_on_postgresql(url: str) -> None:
    assert database(url) == PostgresUrl(url)


def test_a_file_path_stays_the_embedded_sqlite_store() -> None:
    assert database("var/data/gateway.sqlite3") == Path("var/data/gateway.sqlite3")
    assert build_config({}, environ={}).storage.database == Path("var/data/gateway.sqlite3")


def test_the_password_in_the_url_is_never_shown() -> None:
    url = database("postgresql://gw:s3cret@db1:5432/gateway")
    assert url.url == "postgresql://gw:s3cret@db1:5432/gateway"  # what libpq is given
    assert str(url) == "postgresql://gw:***@db1:5432/gateway"
    assert "s3cret" not in repr(url) and "s3cret" not in repr(build_config(
        {"storage": {"database": url.url}}, environ={}).storage)


def test_the_scheme_may_be_written_in_capitals() -> None:
    assert database("PostgreSQL://gw@db1/gateway").url == "postgresql://gw@db1/gateway"


@pytest.mark.parametrize(("url", "problem"), [
    ("postgresql://gw@db1:port/gateway", "not a port number"),
    ("postgresql://gw@db1", "name the database"),
])
def test_a_url_libpq_could_not_use_is_a_config_error_naming_the_key(url, problem) -> None:
    with pytest.raises(ConfigError, match=f"^storage.database: {problem}"):
        database(url)


def test_placeholders_become_psycopgs_but_not_inside_quotes() -> None:
    assert _pyformat("SELECT * FROM t WHERE a = ? AND b IN (?, ?)") == \
        "SELECT * FROM t WHERE a = %s AND b IN (%s, %s)"
    assert _pyformat("SELECT '?', \"odd?name\" FROM t WHERE c = ?") == \
        "SELECT '?', \"odd?name\" FROM t WHERE c = %s"
    assert _pyformat("SELECT 'a%b' WHERE d LIKE ?") == "SELECT 'a%%b' WHERE d LIKE %s"


def test_a_row_reads_by_position_and_by_column_name() -> None:
    row = Row(("t1", 3), {"id": 0, "count": 1})
    assert (row[0], row["id"], row[1], row["count"]) == ("t1", "t1", 3, 3)
    assert dict(row) == {"id": "t1", "count": 3} and tuple(row) == ("t1", 3) and len(row) == 2


def wrapped(error: psycopg.Error) -> MetadataError:
    """What the engine raises for a driver error."""
    try:
        raise _pg_failure(error) from _pg_cause(error)
    except MetadataError as raised:
        return raised


def test_postgresqls_disk_full_is_told_apart_from_other_trouble() -> None:
    full = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert is_disk_full(full) and is_engine_error(full)
    assert reply_for_exception(full) == DISK_FULL
    assert reply_for_exception(wrapped(full)) == DISK_FULL
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    assert not is_disk_full(lost) and is_engine_error(lost)
    assert reply_for_exception(lost) == STORAGE_UNAVAILABLE
    assert reply_for_exception(wrapped(lost)) == STORAGE_UNAVAILABLE
    assert "closed the connection" in str(wrapped(lost))
