"""The two engines' schemas cannot drift apart: after their migrations, SQLite and PostgreSQL have
the same tables, the same columns (name, kind of value, NOT NULL, default), the same keys
(primary, unique, foreign) and the same named indexes on the same columns or expressions.
A migration added to one engine's directory and not the other's fails here."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import PostgresUrl
from gateway.store.db import Database

MIGRATIONS = Path(__file__).resolve().parents[2] / "gateway" / "store" / "migrations"
# What each engine calls the three kinds of value the store keeps.
KINDS = {"integer": "integer", "bigint": "integer", "text": "text", "blob": "bytes",
         "bytea": "bytes"}


def _expression(text: str) -> str:
    return re.sub(r"[\s\"]+", "", text).lower()  # PostgreSQL quotes some names


def _default(text: str | None) -> str | None:
    """'first-download'::text and 'first-download' are the same default."""
    return None if text is None else re.sub(r"::[a-z ]+$", "", text)


def sqlite_schema(db: Database) -> dict:
    schema: dict = {"tables": {}, "indexes": {}}
    tables = [row[0] for row in db.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        info = db.query(f"PRAGMA table_info({table})")
        columns = {row["name"]: (KINDS[row["type"].lower()], bool(row["notnull"] or row["pk"]),
                                 _default(row["dflt_value"])) for row in info}
        keys = {tuple(row["name"] for row in sorted(info, key=lambda r: r["pk"]) if row["pk"])}
        for index in db.query(f"PRAGMA index_list({table})"):
            if index["origin"] in ("u", "pk"):
                columns_of = db.query(f"PRAGMA index_info({index['name']})")
                keys.add(tuple(row["name"] for row in columns_of))
        references = {(row["from"], row["table"], row["to"])
                      for row in db.query(f"PRAGMA foreign_key_list({table})")}
        schema["tables"][table] = {"columns": columns, "keys": keys, "references": references}
    for name, table, sql in db.query(
            "SELECT name, tbl_name, sql FROM sqlite_master"
            " WHERE type = 'index' AND sql IS NOT NULL"):
        on = re.search(r"\((.*)\)\s*$", sql, re.S)
        schema["indexes"][name] = (table, _expression(on.group(1)))
    return schema


def postgresql_schema(db: Database) -> dict:
    schema: dict = {"tables": {}, "indexes": {}}
    tables = [row[0] for row in db.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        columns = {
            row[0]: (KINDS[row[1]], row[2] == "NO", _default(row[3]))
            for row in db.query(
                "SELECT column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = ?", (table,))
        }
        constraints = db.query(
            "SELECT c.contype, array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY"
            " AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = c.conrelid"
            " AND a.attnum = k.attnum ORDER BY k.n), c.confrelid::regclass::text,"
            " array(SELECT a.attname FROM unnest(c.confkey) AS k(attnum) JOIN pg_attribute a"
            " ON a.attrelid = c.confrelid AND a.attnum = k.attnum)"
            " FROM pg_constraint c WHERE c.conrelid = ?::regclass", (table,))
        keys = {tuple(row[1]) for row in constraints if row[0] in ("p", "u")}
        references = {(row[1][0], row[2], row[3][0]) for row in constraints if row[0] == "f"}
        schema["tables"][table] = {"columns": columns, "keys": keys, "references": references}
    for name, table, definition in db.query(
            "SELECT i.indexname, i.tablename, i.indexdef FROM pg_indexes i"
            " WHERE i.schemaname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
            " WHERE c.conindid = (quote_ident(i.indexname))::regclass)"):
        on = re.search(r"USING \w+ \((.*)\)\s*$", definition, re.S)
        schema["indexes"][name] = (table, _expression(on.group(1)))
    return schema


def test_both_engines_have_the_same_migrations() -> None:
    names = {engine: sorted(p.name for p in (MIGRATIONS / engine).glob("[0-9]*.sql"))
             for engine in ("sqlite", "postgresql")}
    assert names["sqlite"] == names["postgresql"]


def test_both_engines_end_with_the_same_tables_columns_keys_and_indexes(
    tmp_path: Path, postgres_dsn: str,
) -> None:
    with Database(tmp_path / "meta.db") as sqlite, Database(PostgresUrl(postgres_dsn)) as pg:
        on_sqlite, on_postgresql = sqlite_schema(sqlite), postgresql_schema(pg)
    assert on_sqlite["tables"].keys() == on_postgresql["tables"].keys()
    for table, shape in on_sqlite["tables"].items():
        assert shape == on_postgresql["tables"][table], table
    assert on_sqlite["indexes"] == on_postgresql["indexes"]
    assert "events" in on_sqlite["tables"] and "links_by_recipient" in on_sqlite["indexes"]


def test_only_the_relay_claims_are_unlogged_on_postgresql(postgres_dsn: str) -> None:
    """Migration 0011: the relay claims skip the WAL (their commits wait for no flush); every
    other table is logged, so what a 250 rests on survives a crash of the server."""
    with Database(PostgresUrl(postgres_dsn)) as pg:
        unlogged = {row[0] for row in pg.query(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relpersistence = 'u'"
            " AND relnamespace = 'public'::regnamespace")}
    assert unlogged == {"relaying"}
