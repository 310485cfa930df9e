"""`ppap-gateway migrate-store` on stores a real gateway filled: a running embedded gateway (SQLite
and a blob directory) is copied into a private PostgreSQL, rows and sealed files as they are;
a second run writes nothing, a run after more mail copies only what is new, rows purged on the
source are reported and pruned, the verification names a row or a blob that differs and the
next run repairs them, and a gateway on the copy serves a link issued before the move. Also:
other schema versions are refused, text keys beyond ASCII are walked alike on both engines, a
100 MiB blob is copied in bounded memory. The oracles read both stores themselves (sqlite3,
psycopg, the blob files), not through the command's own comparison."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway.config import PostgresUrl
from gateway.records import revoke
from gateway.store.blob_backends.directory import LocalDirectoryBackend
from gateway.store.blob_backends.postgres import PostgresChunkBackend
from gateway.store.copying import PIECE, copy_sealed
from gateway.store.db import Database
from gateway.store.relaying import RelayClaims
from gateway.store.throttles import ThrottleStore
from tests.support.portal_http import Portal, download_once
from tests.support.postgres import raw_rows
from tests.support.received import links_in
from tests.support.running import corpus_mail, send_corpus

ROOT = Path(__file__).resolve().parents[2]
# Not rows the copy compares; relaying (claims of relays running now) is not copied at all.
NOT_RECORDS = ("schema_migrations", "blobs", "blob_chunks", "relaying")


def migrate(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "migrate-store", "--config", str(config), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def source_config(running, tmp_path: Path) -> Path:
    """The embedded gateway's storage, as its administrator's configuration file names it."""
    storage = running.gateway.config.storage
    path = tmp_path / "source.toml"
    path.write_text(
        f'[gateway]\ninternal_domains = ["city.example.lg.jp"]\n'
        f'[storage]\ndata_dir = "{storage.data_dir}"\ndatabase = "{storage.database}"\n'
        f'master_key_file = "{storage.master_key_file}"\nblobs_dir = "{storage.blobs_dir}"\n')
    return path


def data_dir_config(data_dir: Path, tmp_path: Path) -> Path:
    """A configuration naming only an embedded store's data directory (no gateway ran on it)."""
    path = tmp_path / "source.toml"
    path.write_text(f'[gateway]\ninternal_domains = ["city.example.lg.jp"]\n'
                    f'[storage]\ndata_dir = "{data_dir}"\n')
    return path


def table_line(output: str, table: str) -> dict[str, str]:
    """The command's verification table row of one table, by column."""
    names = ("rows_source", "rows_target", "sha_source", "sha_target", "new", "changed", "gone",
             "result")
    match = re.search(rf"^{re.escape(table)}\s+(.*)$", output, re.MULTILINE)
    assert match, output
    return dict(zip(names, match.group(1).split()))


# -- oracles of our own -----------------------------------------------------------------------


def sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
            if name not in NOT_RECORDS]


def sqlite_rows(path: Path, table: str) -> list[dict]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return sorted((dict(row) for row in db.execute(f"SELECT * FROM {table}")), key=repr)


def pg_rows(dsn: str, table: str) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as db:
        return sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def pg_versions(dsn: str, table: str) -> dict[str, str]:
    """Each row (as text) with the id of the transaction that last wrote it (xmin): a row a
    run did not touch keeps it."""
    return {row: xmin for xmin, row in raw_rows(dsn, f"SELECT xmin::text, t::text FROM {table} t")}


def assert_same_records(sqlite_path: Path, dsn: str) -> None:
    tables = sqlite_tables(sqlite_path)
    assert {"transfers", "files", "links", "events", "outbox"} <= set(tables)
    for table in tables:
        assert pg_rows(dsn, table) == sqlite_rows(sqlite_path, table), table


def blob_ids(sqlite_path: Path) -> list[str]:
    with sqlite3.connect(sqlite_path) as db:
        return sorted(row[0] for row in db.execute(
            "SELECT blob_id FROM files UNION SELECT blob_id FROM extracted_files"))


def sealed_in_database(dsn: str, blob_id: str) -> bytes:
    return b"".join(bytes(data) for (data,) in raw_rows(
        dsn, "SELECT data FROM blob_chunks WHERE blob_id = %s ORDER BY seq", (blob_id,)))


def sealed_in_directory(root: Path, blob_id: str) -> bytes:
    return (root / blob_id[:2] / blob_id[2:4] / blob_id).read_bytes()


def transfer_with_links(running, sink, mail_name: str, already: int = 0) -> list[str]:
    """Send a corpus mail through the gateway; the link tokens its notices carry."""
    mail = corpus_mail(mail_name)
    assert send_corpus(running.port, mail)[0] == 250
    notices = sink.wait_for(already + len(mail.rcpt_tos))[already:]
    return sorted({token for notice in notices for token in links_in(notice.data)})


# -- the tests --------------------------------------------------------------------------------


def test_a_running_embedded_gateway_moves_to_postgresql_and_serves_its_old_links_there(
    start_gateway, sink, postgres_dsn, tmp_path,
) -> None:
    source = start_gateway()
    sqlite_path = source.gateway.config.storage.database
    attachment = corpus_mail("01_outlook_jis_aes256").side["attachments"][0]
    tokens = transfer_with_links(source, sink, "01_outlook_jis_aes256")
    first = download_once(source, tokens[0])
    assert hashlib.sha256(first).hexdigest() == attachment["sha256"]
    (transfer,) = source.db.transfers_since(datetime(2000, 1, 1, tzinfo=timezone.utc))
    downloaded, other = sorted(source.db.links_of(transfer.id),
                               key=lambda link: -link.download_count)
    revoke(source.db, other.id, source.clock.now)
    config = source_config(source, tmp_path)

    # The gateway is running: the copy reads a snapshot of its file.
    copied = migrate(config, "--to", postgres_dsn, "--blobs-to", "database")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert "never decrypted" in copied.stdout and "verified:" in copied.stdout
    assert_same_records(sqlite_path, postgres_dsn)
    for blob_id in blob_ids(sqlite_path):
        assert sealed_in_database(postgres_dsn, blob_id) == sealed_in_directory(
            source.gateway.config.storage.blobs_dir, blob_id)

    # Again: nothing to copy, no row written.
    tables = sqlite_tables(sqlite_path) + ["blobs"]
    before = {table: pg_versions(postgres_dsn, table) for table in tables}
    again = migrate(config, "--to", postgres_dsn, "--blobs-to", "database")
    assert again.returncode == 0, again.stdout + again.stderr
    for table in tables:
        assert pg_versions(postgres_dsn, table) == before[table], table
        if table != "blobs":
            assert table_line(again.stdout, table)["new"] == "0", again.stdout
            assert table_line(again.stdout, table)["changed"] == "0", again.stdout
    assert table_line(again.stdout, "blobs (sealed bytes)")["new"] == "0"

    # More mail: only what is new is copied; the rows that stayed the same are not written.
    transfer_with_links(source, sink, "02_thunderbird_rfc2231_longname", already=len(tokens))
    before = {table: pg_versions(postgres_dsn, table) for table in tables}
    more = migrate(config, "--to", postgres_dsn, "--blobs-to", "database")
    assert more.returncode == 0, more.stdout + more.stderr
    assert table_line(more.stdout, "transfers")["new"] == "1"
    assert table_line(more.stdout, "blobs (sealed bytes)")["new"] == "1"
    for table in tables:
        after = pg_versions(postgres_dsn, table)
        untouched = set(before[table]) & set(after)
        assert {row: after[row] for row in untouched} == {
            row: before[table][row] for row in untouched}, table
    assert len(pg_versions(postgres_dsn, "blobs")) == len(blob_ids(sqlite_path)) == 2

    # The cut-over: the gateway stopped, a last run, then a gateway on the copy.
    source.stop()
    last = migrate(config, "--to", postgres_dsn, "--blobs-to", "database")
    assert last.returncode == 0, last.stdout + last.stderr
    assert_same_records(sqlite_path, postgres_dsn)
    events_before = raw_rows(postgres_dsn, "SELECT max(id) FROM events")[0][0]
    node = start_gateway(document={"storage": {
        "database": postgres_dsn, "blobs": "database", "data_dir": str(tmp_path / "node"),
        "master_key_file": str(source.gateway.config.storage.master_key_file)}})

    assert download_once(node, tokens[0]) == first  # a link issued before the move
    assert raw_rows(postgres_dsn, "SELECT download_count FROM links WHERE id = %s",
                    (downloaded.id,)) == [(2,)]
    assert raw_rows(postgres_dsn, "SELECT max(id) FROM events")[0][0] > events_before
    revoked_page = Portal(node).request(f"/d/{tokens[1]}")
    assert revoked_page.status != 200 or "/f/" not in revoked_page.text

    # Once a gateway runs on it, the target is the cluster's: no copy overwrites it.
    refused = migrate(config, "--to", postgres_dsn, "--blobs-to", "database")
    assert refused.returncode == 2 and "connected" in refused.stderr, refused.stderr


def test_the_verification_names_a_row_and_a_blob_that_differ_and_a_run_repairs_them(
    start_gateway, sink, postgres_dsn, tmp_path,
) -> None:
    source = start_gateway()
    sqlite_path = source.gateway.config.storage.database
    transfer_with_links(source, sink, "01_outlook_jis_aes256")
    source.stop()
    config = source_config(source, tmp_path)
    shared = tmp_path / "shared-blobs"  # the target's files in a directory (every node mounts)
    target = ("--to", postgres_dsn, "--blobs-to", str(shared))
    assert migrate(config, *target).returncode == 0
    assert migrate(config, *target, "--verify-only").returncode == 0

    (blob_id,) = blob_ids(sqlite_path)
    link_id = pg_rows(postgres_dsn, "links")[0]["id"]
    delivery = pg_rows(postgres_dsn, "deliveries")[0]
    raw_rows(postgres_dsn, "UPDATE links SET download_count = download_count + 7 WHERE id = %s",
             (link_id,))
    raw_rows(postgres_dsn, "DELETE FROM deliveries WHERE fingerprint = %s AND recipient = %s",
             (delivery["fingerprint"], delivery["recipient"]))
    blob = shared / blob_id[:2] / blob_id[2:4] / blob_id
    sealed = bytearray(blob.read_bytes())
    sealed[len(sealed) // 2] ^= 0x01  # one bit, the size unchanged
    blob.write_bytes(sealed)

    checked = migrate(config, *target, "--verify-only")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"links: id={link_id!r}: differs" in checked.stdout
    assert (f"deliveries: fingerprint={delivery['fingerprint']!r},"
            f" recipient={delivery['recipient']!r}: missing on the target") in checked.stdout
    assert f"blob {blob_id}: differs" in checked.stdout
    assert table_line(checked.stdout, "transfers")["result"] == "ok"
    assert "NOT verified: 3 mismatch(es)" in checked.stdout

    repaired = migrate(config, *target)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert table_line(repaired.stdout, "links")["changed"] == "1"
    assert table_line(repaired.stdout, "deliveries")["new"] == "1"
    assert table_line(repaired.stdout, "blobs (sealed bytes)")["changed"] == "1"
    assert migrate(config, *target, "--verify-only").returncode == 0
    assert_same_records(sqlite_path, postgres_dsn)
    assert sealed_in_directory(shared, blob_id) == sealed_in_directory(
        source.gateway.config.storage.blobs_dir, blob_id)


def test_rows_purged_on_the_source_are_reported_then_pruned_with_their_files(
    start_gateway, sink, postgres_dsn, tmp_path,
) -> None:
    source = start_gateway()
    sqlite_path = source.gateway.config.storage.database
    transfer_with_links(source, sink, "01_outlook_jis_aes256")
    config = source_config(source, tmp_path)
    target = ("--to", postgres_dsn, "--blobs-to", "database")
    assert migrate(config, *target).returncode == 0
    assert raw_rows(postgres_dsn, "SELECT count(*) FROM blobs")[0][0] == 1

    source.advance(days=8)  # past the link lifetime: the purge forgets the files
    assert source.call(source.gateway.purge_now()).transfers_purged == 1
    assert blob_ids(sqlite_path) == []

    kept = migrate(config, *target)
    assert kept.returncode == 1, kept.stdout + kept.stderr
    assert table_line(kept.stdout, "files")["gone"] == "1"
    assert table_line(kept.stdout, "transfers")["changed"] == "1"  # its state: purged
    assert "--prune removes them" in kept.stdout
    assert raw_rows(postgres_dsn, "SELECT count(*) FROM files")[0][0] == 1

    pruned = migrate(config, *target, "--prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert table_line(pruned.stdout, "files")["gone"] == "1"
    assert re.search(r"pruned: \d+ row\(s\), 1 blob\(s\)", pruned.stdout), pruned.stdout
    assert_same_records(sqlite_path, postgres_dsn)
    assert raw_rows(postgres_dsn, "SELECT count(*) FROM blobs")[0][0] == 0


def test_a_target_at_another_schema_version_than_the_program_is_refused(
    postgres_dsn, tmp_path,
) -> None:
    sqlite_path = tmp_path / "data" / "gateway.sqlite3"
    sqlite_path.parent.mkdir()
    Database(sqlite_path).close()  # an embedded store that never saw mail
    config = data_dir_config(sqlite_path.parent, tmp_path)
    target = ("--to", postgres_dsn, "--blobs-to", "database")

    empty = migrate(config, *target, "--verify-only")
    assert empty.returncode == 2 and "run migrate-store without --verify-only" in empty.stderr
    assert migrate(config, *target).returncode == 0

    raw_rows(postgres_dsn, "INSERT INTO schema_migrations (version, name, applied_at)"
             " VALUES (9999, '9999_future.sql', '2030-01-01T00:00:00.000000Z')")
    newer = migrate(config, *target)
    assert newer.returncode == 2 and "newer than this program" in newer.stderr, newer.stderr
    raw_rows(postgres_dsn, "DELETE FROM schema_migrations WHERE version = 9999")

    with sqlite3.connect(sqlite_path) as db:
        db.execute("DELETE FROM schema_migrations WHERE version ="
                   " (SELECT max(version) FROM schema_migrations)")
    older = migrate(config, *target)
    assert older.returncode == 2 and "the source is at schema version" in older.stderr


def test_a_100_mb_blob_is_copied_a_piece_at_a_time(postgres_dsn, tmp_path) -> None:
    Database(PostgresUrl(postgres_dsn)).close()  # the blob tables
    source = LocalDirectoryBackend(tmp_path / "blobs")
    blob_id = "ab" * 16
    upload, expected = source.begin(blob_id), hashlib.sha256()
    for _ in range(100):
        piece = hashlib.sha256(expected.digest()).digest() * (PIECE // 32)
        expected.update(piece)
        upload.write(piece)
    upload.commit()
    target = PostgresChunkBackend(postgres_dsn)
    try:
        tracemalloc.start()
        try:
            copied = copy_sealed(source, target, blob_id)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert copied == expected.hexdigest()
        assert hashlib.sha256(target.open(blob_id, sequential=True).read()).hexdigest() == copied
    finally:
        target.close()
    assert peak < 8 * PIECE, f"{peak / PIECE:.1f} MiB held at once for a 100 MiB blob"


def test_text_keys_beyond_ascii_are_walked_in_the_same_order_on_both_engines(
    postgres_dsn, tmp_path,
) -> None:
    """deliveries is keyed by recipient, which SMTPUTF8 lets be any text: SQLite (BINARY), the
    target (COLLATE "C") and the walk must agree on its order, or rows would be paired wrong."""
    sqlite_path = tmp_path / "data" / "gateway.sqlite3"
    sqlite_path.parent.mkdir()
    recipients = ["Zed@x.example", "abe@x.example", "élise@x.example", "ﬀ@x.example",
                  "山田@例え.jp", "😀@x.example", "\u00ff@x.example", "Ω@x.example", "_@x.example"]
    with Database(sqlite_path) as store:
        for recipient in recipients:
            store.record_delivery("fingerprint", recipient, datetime.now(timezone.utc))
    config = data_dir_config(sqlite_path.parent, tmp_path)
    target = ("--to", postgres_dsn, "--blobs-to", "database")

    copied = migrate(config, *target)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert table_line(copied.stdout, "deliveries")["new"] == str(len(recipients))
    again = migrate(config, *target)
    assert table_line(again.stdout, "deliveries")["new"] == "0", again.stdout
    assert migrate(config, *target, "--verify-only").returncode == 0
    assert_same_records(sqlite_path, postgres_dsn)


def test_relay_claims_stay_behind_and_throttles_move_even_those_past_their_end(
    postgres_dsn, tmp_path,
) -> None:
    """A claim of the old deployment's relay, copied, would defer the client's retry on the new
    cluster for up to 15 minutes: not copied, and not a mismatch. A lock-out in force stays in
    force; a use past its end stays a row until a purge on the source deletes it, so it is
    copied and verified like any other (time passing alone changes no row)."""
    sqlite_path = tmp_path / "data" / "gateway.sqlite3"
    sqlite_path.parent.mkdir()
    now = datetime.now(timezone.utc)
    with Database(sqlite_path) as store:
        assert RelayClaims(store).claim("f" * 64, "old-node", now, now + timedelta(minutes=15))
        throttles = ThrottleStore(store)
        throttles.add("auth", "192.0.2.7", now + timedelta(minutes=10))
        throttles.add("auth", "192.0.2.7", now - timedelta(seconds=1))
    config = data_dir_config(sqlite_path.parent, tmp_path)
    target = ("--to", postgres_dsn, "--blobs-to", "database")

    copied = migrate(config, *target)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert raw_rows(postgres_dsn, "SELECT count(*) FROM relaying") == [(0,)]
    assert not re.search(r"^relaying\s", copied.stdout, re.MULTILINE), copied.stdout
    assert table_line(copied.stdout, "throttle_hits")["new"] == "2", copied.stdout
    assert pg_rows(postgres_dsn, "throttle_hits") == sqlite_rows(sqlite_path, "throttle_hits")
    verified = migrate(config, *target, "--verify-only")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_same_records(sqlite_path, postgres_dsn)
