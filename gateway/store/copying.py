"""Read and write a metadata store's rows as they are, table by table, to copy an embedded store
(SQLite) into a clustered one (PostgreSQL): the tables, keys and foreign keys as each schema has
them at run time, the rows of a table in key order, raw inserts, updates and deletes keeping ids
and values, and the sealed bytes of blobs streamed from one BlobBackend to another.

Used by gateway/ops/migrate_store.py, which decides what to copy. Nothing here knows the
gateway's tables by name, except the few that are not rows of the store's records
(NOT_COPIED): whatever the migrations define, including tables added later, is listed from the
schema itself.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from gateway.config import PostgresUrl
from gateway.store.blob_backends import BlobBackend, BlobMissingError
from gateway.store.db import _bundled_migrations, _read_migrations

# Tables that are not records to copy row by row, and why.
NOT_COPIED = {
    "schema_migrations": "compared by version (the target applies its own migrations)",
    "blobs": "the database blob backend's own rows: blobs are copied through the backends",
    "blob_chunks": "the database blob backend's own rows: blobs are copied through the backends",
    "relaying": "claims of the relays running now (store/relaying.py): a copied one would defer"
                " a client's retry on the new cluster until it expired (up to 15 minutes)",
}
BLOB_REFERENCE = "blob_id"  # a column of that name in a copied table names a blob to copy
PIECE = 1024 * 1024  # sealed bytes read and written at a time: memory per blob copy
BATCH = 500  # rows per executemany
APPLICATION_NAME = "ppap-gateway migrate-store"
# The metadata pool's sessions (store/engines.py): a running gateway always holds one open.
GATEWAY_APPLICATION_NAME = "ppap-gateway"
# pg_try_advisory_xact_lock(classid, objid): 'PPAP' and 2 (1 is the store's migration lock).
_COPY_LOCK = (0x50504150, 2)
_TEXT_TYPES = ("text", "character varying", "character")


class CopyError(Exception):
    """The copy cannot go on: a schema that differs, a row the target refuses, a lock held."""


@dataclass(frozen=True)
class Table:
    """One table as a schema defines it. `columns` are in name order (the order every row is
    read, written and encoded in); `key` is the primary key (every column if it has none)."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    has_primary_key: bool
    parents: frozenset[str] = frozenset()  # tables its foreign keys refer to
    text_columns: frozenset[str] = frozenset()  # PostgreSQL: ordered COLLATE "C"
    identity: str | None = None  # PostgreSQL: a column filled from a sequence

    @property
    def key_positions(self) -> tuple[int, ...]:
        return tuple(self.columns.index(column) for column in self.key)


def schema_versions_of_program(engine: str) -> set[int]:
    """The migration versions this program brings for an engine ('sqlite', 'postgresql')."""
    return {version for version, _name, _sql in _read_migrations(_bundled_migrations(engine))}


def copy_order(tables: Iterable[Table]) -> list[Table]:
    """Parents before the tables that refer to them (inserts in this order, deletes in the
    reverse), by name where nothing else decides."""
    pending = {table.name: table for table in tables}
    ordered: list[Table] = []
    while pending:
        ready = sorted(name for name, table in pending.items()
                       if not (table.parents & pending.keys()) - {name})
        if not ready:
            raise CopyError(f"foreign keys go round in a circle: {', '.join(sorted(pending))}")
        ordered.extend(pending.pop(name) for name in ready[:1])
    return ordered


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_list(table: Table) -> str:
    return ", ".join(map(_quoted, table.columns))


# -- the source: one read transaction on an SQLite file ---------------------------------------


class SqliteSnapshot:
    """An SQLite store opened read-only, every read in one transaction: what the file held at
    the first read, whatever a running gateway commits meanwhile (WAL readers never block its
    writers). Close it soon: a reader held for long keeps the gateway's checkpoints waiting."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0):
        if not path.is_file():
            raise CopyError(f"no database at {path}")
        try:
            self._connection = sqlite3.connect(
                path.resolve().as_uri() + "?mode=ro", uri=True, timeout=busy_timeout,
                isolation_level=None, check_same_thread=False)
            self._connection.execute("BEGIN")
            self._connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # pins it
        except sqlite3.Error as exc:
            raise CopyError(f"{path}: cannot read the database: {exc}") from exc
        self.location = str(path)

    def schema_versions(self) -> set[int]:
        try:
            return {row[0] for row in self._connection.execute(
                "SELECT version FROM schema_migrations")}
        except sqlite3.Error as exc:
            raise CopyError(f"{self.location}: not a gateway's database ({exc})") from None

    def tables(self) -> list[Table]:
        names = [row[0] for row in self._connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            " ORDER BY name")]
        return copy_order(self._table(name) for name in names if name not in NOT_COPIED)

    def _table(self, name: str) -> Table:
        # table_info: (cid, name, type, notnull, default, pk position or 0)
        info = self._connection.execute(f"PRAGMA table_info({_quoted(name)})").fetchall()
        columns = tuple(sorted(row[1] for row in info))
        key = tuple(row[1] for row in sorted((row for row in info if row[5]),
                                             key=lambda row: row[5]))
        parents = frozenset(row[2] for row in self._connection.execute(
            f"PRAGMA foreign_key_list({_quoted(name)})"))
        return Table(name, columns, key or columns, bool(key), parents)

    def rows(self, table: Table) -> Iterator[tuple[Any, ...]]:
        """Every row, values in `table.columns` order, in key order (SQLite's BINARY: byte
        order, as the target's COLLATE "C")."""
        order = ", ".join(map(_quoted, table.key))
        try:
            cursor = self._connection.execute(
                f"SELECT {_column_list(table)} FROM {_quoted(table.name)} ORDER BY {order}")
            while batch := cursor.fetchmany(BATCH):
                yield from batch
        except sqlite3.Error as exc:
            raise CopyError(f"{self.location}: reading {table.name}: {exc}") from None

    def sequence(self, table: str) -> int:
        """The last id an AUTOINCREMENT of the table gave (0 if none): never given again."""
        try:
            rows = self._connection.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchall()
        except sqlite3.OperationalError:
            return 0  # no AUTOINCREMENT table at all
        return int(rows[0][0]) if rows else 0

    def blob_ids(self, tables: Iterable[Table]) -> list[str]:
        return _blob_ids(self._connection.execute, tables)

    def close(self) -> None:
        self._connection.close()  # ends the read transaction

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _blob_ids(execute: Any, tables: Iterable[Table]) -> list[str]:
    selects = [f"SELECT {BLOB_REFERENCE} FROM {_quoted(table.name)}"
               for table in tables if BLOB_REFERENCE in table.columns]
    if not selects:
        return []
    rows = execute(" UNION ".join(selects) + " ORDER BY 1").fetchall()
    return [row[0] for row in rows if row[0] is not None]


# -- the target: one transaction on the PostgreSQL database -----------------------------------


class PostgresTarget:
    """A connection of its own to the target database, not the store's pool: one transaction
    at a time (`commit`), read through server-side cursors, written in batches."""

    def __init__(self, url: PostgresUrl, *, read_only: bool = False):
        import psycopg

        self._psycopg = psycopg
        self.location = str(url)
        try:
            self._connection = psycopg.connect(
                url.url, connect_timeout=10, application_name=APPLICATION_NAME, autocommit=True)
            self._connection.execute("SET synchronous_commit = on")  # durable when COMMIT returns
            self._connection.autocommit = False
            if read_only:  # one snapshot for every table read, and nothing written
                self._connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                self._connection.read_only = True
        except psycopg.Error as exc:
            raise CopyError(f"{self.location}: cannot connect: {_reason(exc)}") from None
        self._cursors = 0

    def _query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            cursor = self._connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        except self._psycopg.Error as exc:
            raise CopyError(f"{self.location}: {_reason(exc)}") from None

    def gateway_sessions(self) -> int:
        """Sessions of gateways' metadata pools connected to the database now (a blob
        backend's are not counted: an earlier run's may still be closing)."""
        return self._query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s", (GATEWAY_APPLICATION_NAME,))[0][0]

    def take_copy_lock(self) -> bool:
        """Held until the transaction ends: two copies into one database would interleave."""
        return self._query("SELECT pg_try_advisory_xact_lock(%s, %s)", _COPY_LOCK)[0][0]

    def schema_versions(self) -> set[int]:
        if not self._query("SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0]:
            return set()
        return {row[0] for row in self._query("SELECT version FROM schema_migrations")}

    def tables(self) -> dict[str, Table]:
        names = [row[0] for row in self._query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema ="
            " current_schema() AND table_type = 'BASE TABLE'")]
        return {name: self._table(name) for name in names if name not in NOT_COPIED}

    def _table(self, name: str) -> Table:
        described = self._query(
            "SELECT column_name, data_type, is_identity = 'YES'"
            " OR coalesce(column_default, '') LIKE 'nextval(%%'"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s", (name,))
        key = tuple(row[0] for row in self._query(
            "SELECT k.column_name FROM information_schema.table_constraints c"
            " JOIN information_schema.key_column_usage k USING (constraint_schema,"
            " constraint_name, table_name) WHERE c.constraint_type = 'PRIMARY KEY'"
            " AND c.table_schema = current_schema() AND c.table_name = %s"
            " ORDER BY k.ordinal_position", (name,)))
        parents = frozenset(row[0] for row in self._query(
            "SELECT confrelid::regclass::text FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND contype = 'f'", (_quoted(name),)))
        columns = tuple(sorted(row[0] for row in described))
        return Table(
            name, columns, key or columns, bool(key), parents,
            text_columns=frozenset(row[0] for row in described if row[1] in _TEXT_TYPES),
            identity=next((row[0] for row in described if row[2]), None),
        )

    def rows(self, table: Table) -> Iterator[tuple[Any, ...]]:
        """Every row in key order, read a batch at a time by a server-side cursor (as it was
        when the cursor opened: writes of this transaction meanwhile are not seen by it)."""
        order = ", ".join(
            _quoted(column) + (' COLLATE "C"' if column in table.text_columns else "")
            for column in table.key)
        self._cursors += 1
        try:
            with self._connection.cursor(name=f"copy_rows_{self._cursors}") as cursor:
                cursor.itersize = BATCH
                cursor.execute(
                    f"SELECT {_column_list(table)} FROM {_quoted(table.name)} ORDER BY {order}")
                yield from cursor
        except self._psycopg.Error as exc:
            raise CopyError(f"{self.location}: reading {table.name}: {_reason(exc)}") from None

    def insert(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join(["%s"] * len(table.columns))
        self._write(table, rows, f"INSERT INTO {_quoted(table.name)} ({_column_list(table)})"
                                 f" VALUES ({marks})")

    def update(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        """Rows whose key is there: every other column set to the row's value."""
        others = [column for column in table.columns if column not in table.key]
        sets = ", ".join(f"{_quoted(column)} = %s" for column in others)
        positions = [table.columns.index(column) for column in others] + list(
            table.key_positions)
        self._write(table, [tuple(row[i] for i in positions) for row in rows],
                    f"UPDATE {_quoted(table.name)} SET {sets} WHERE {_matching(table)}")

    def delete(self, table: Table, keys: list[tuple[Any, ...]]) -> None:
        self._write(table, keys, f"DELETE FROM {_quoted(table.name)} WHERE {_matching(table)}")

    def _write(self, table: Table, rows: list[tuple[Any, ...]], sql: str) -> None:
        if not rows:
            return
        try:
            with self._connection.cursor() as cursor:
                cursor.executemany(sql, rows)
        except self._psycopg.Error as exc:
            raise CopyError(f"the target refuses rows of {table.name}: {_reason(exc)}") from None

    def advance_identity(self, table: Table, at_least: int) -> None:
        """Move the table's sequence past its highest id and past `at_least` (the ids the
        source ever gave), so the next row gets a new id; never back."""
        if table.identity is None:
            return
        self._query(
            f"SELECT setval(seq::regclass, top) FROM (SELECT pg_get_serial_sequence(%s, %s) AS seq,"
            f" greatest(%s, (SELECT coalesce(max({_quoted(table.identity)}), 0)"
            f" FROM {_quoted(table.name)})) AS top) wanted"
            " WHERE top > coalesce(pg_sequence_last_value(seq::regclass), 0)",
            (_quoted(table.name), table.identity, at_least))

    def identity_behind(self, table: Table) -> bool:
        """Whether the table's sequence would hand out an id its rows already have."""
        if table.identity is None:
            return False
        return self._query(
            f"SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass),"
            f" 0) < (SELECT coalesce(max({_quoted(table.identity)}), 0)"
            f" FROM {_quoted(table.name)})", (_quoted(table.name), table.identity))[0][0]

    def blob_ids(self, tables: Iterable[Table]) -> list[str]:
        try:
            return _blob_ids(self._connection.execute, tables)
        except self._psycopg.Error as exc:
            raise CopyError(f"{self.location}: {_reason(exc)}") from None

    def commit(self) -> None:
        try:
            self._connection.commit()
        except self._psycopg.Error as exc:
            raise CopyError(f"{self.location}: cannot commit: {_reason(exc)}") from None

    def close(self) -> None:
        self._connection.close()  # an open transaction is rolled back

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _matching(table: Table) -> str:
    # NULL matches NULL only in a table without a primary key (whose key is every column).
    equals = " = %s" if table.has_primary_key else " IS NOT DISTINCT FROM %s"
    return " AND ".join(_quoted(column) + equals for column in table.key)


def _reason(exc: BaseException) -> str:
    """The server's message (and its detail, e.g. the key of a duplicate), on one line."""
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc)
    detail = getattr(diag, "message_detail", None)
    return " ".join(f"{text} ({detail})".split() if detail else text.split())


# -- blobs: sealed bytes, streamed ----------------------------------------------------------


def sealed_sha256(backend: BlobBackend, blob_id: str) -> str | None:
    """SHA-256 of the blob's sealed bytes as the backend keeps them; None if it is not there."""
    try:
        with backend.open(blob_id, sequential=True) as sealed:
            digest = hashlib.sha256()
            while piece := sealed.read(PIECE):
                digest.update(piece)
    except BlobMissingError:
        return None
    return digest.hexdigest()


def copy_sealed(source: BlobBackend, target: BlobBackend, blob_id: str) -> str:
    """Stream the sealed bytes (never decrypted: every node has the same master key) into a
    new blob of the same id on the target, a piece at a time; their SHA-256. BlobMissingError
    if the source has no such blob (a purge took it since the snapshot)."""
    with source.open(blob_id, sequential=True) as sealed:
        digest = hashlib.sha256()
        upload = target.begin(blob_id)
        try:
            while piece := sealed.read(PIECE):
                digest.update(piece)
                upload.write(piece)
            upload.commit()
        except BaseException:
            upload.abandon()
            raise
    return digest.hexdigest()
