"""SQLite metadata store, its migrations and triggers; password and token hashing."""

from __future__ import annotations

import sqlite3
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.store.crypto import seal_small
from gateway.store.db import Database, MetadataError, MetadataStore
from gateway.store.passwords import (
    PASSWORD_ALPHABET,
    generate_password,
    hash_password,
    hash_token,
    new_token,
    verify_password,
)

T0 = datetime(2024, 4, 1, 9, 0, tzinfo=timezone.utc)
JST = timezone(timedelta(hours=9))
BUNDLED = Path(__file__).resolve().parents[2] / "gateway" / "store" / "migrations" / "sqlite"
SHIPPED = sorted(int(p.name[:4]) for p in BUNDLED.glob("[0-9][0-9][0-9][0-9]_*.sql"))


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "meta.db")
    yield database
    database.close()


def add_transfer(db: Database, transfer_id: str = "t1", **overrides) -> None:
    fields = dict(
        id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@example.jp>",
        sender="taro@example.jp", department="sales", subject="見積書",
        created_at=T0, expires_at=T0 + timedelta(days=7), password_channel="recipient-email",
        locale="ja",
    )
    fields.update(overrides)
    db.insert_transfer(**fields)


def add_link(db: Database, link_id: str, transfer_id: str = "t1", **overrides) -> None:
    fields = dict(
        id=link_id, transfer_id=transfer_id, recipient=f"{link_id}@example.com",
        token_hash=hash_token("token-" + link_id), created_at=T0,
    )
    fields.update(overrides)
    db.insert_link(**fields)


def add_file(db: Database, file_id: str, transfer_id: str = "t1", position: int = 0) -> None:
    db.insert_file(
        id=file_id, transfer_id=transfer_id, display_name="資料.zip",
        content_type="application/zip", size=123, sha256="ab" * 32, blob_id=file_id * 4,
        wrapped_key=b"\x01wrapped-key-" + file_id.encode(), position=position,
    )


def count(db: Database, table: str) -> int:
    with sqlite3.connect(db.path) as raw:
        return raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# -- opening and migrations ------------------------------------------------------------


def test_database_satisfies_the_metadata_store_protocol(db: Database) -> None:
    store: MetadataStore = db
    assert callable(store.transaction)


def test_pragmas_are_wal_normal_sync_and_foreign_keys(db: Database) -> None:
    # NORMAL: every commit is synced by the Database or its barrier (tests/unit/test_durability.py)
    assert db._query("PRAGMA journal_mode")[0][0] == "wal"
    assert db._query("PRAGMA synchronous")[0][0] == 1  # NORMAL
    assert db._query("PRAGMA foreign_keys")[0][0] == 1
    assert db._query("PRAGMA busy_timeout")[0][0] == 5000
    assert db._query("PRAGMA secure_delete")[0][0] == 1


def test_database_file_is_private(db: Database) -> None:
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600


def test_migrations_apply_once_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    with Database(path) as first:
        applied = [tuple(row) for row in first._query("SELECT * FROM schema_migrations")]
        add_transfer(first)
    with Database(path) as second:
        assert [tuple(r) for r in second._query("SELECT * FROM schema_migrations")] == applied
        assert second.transfer("t1") is not None
    assert [row[0] for row in applied] == SHIPPED


def copy_bundled(directory: Path) -> Path:
    directory.mkdir()
    for sql in BUNDLED.glob("*.sql"):
        (directory / sql.name).write_text(sql.read_text(encoding="utf-8"), encoding="utf-8")
    return directory


def test_new_migration_is_applied_on_the_next_open(tmp_path: Path) -> None:
    migrations = copy_bundled(tmp_path / "migrations")
    Database(tmp_path / "meta.db", migrations=migrations).close()
    (migrations / "0090_add_probe.sql").write_text(
        "-- a ';' inside a comment\n"
        "CREATE TABLE probe (v TEXT);\n"
        "INSERT INTO probe VALUES ('a;b');\n"
        "CREATE TRIGGER probe_guard BEFORE DELETE ON probe BEGIN SELECT 1; SELECT 2; END;\n"
        "INSERT INTO probe VALUES ('last, without a semicolon') -- and a closing comment"
    )
    with Database(tmp_path / "meta.db", migrations=migrations) as db:
        assert [r[0] for r in db._query("SELECT version FROM schema_migrations")] == [*SHIPPED, 90]
        values = [row[0] for row in db._query("SELECT v FROM probe")]
        assert values == ["a;b", "last, without a semicolon"]


def test_failing_migration_rolls_back_entirely(tmp_path: Path) -> None:
    migrations = copy_bundled(tmp_path / "migrations")
    (migrations / "0090_broken.sql").write_text(
        "CREATE TABLE half_done (v TEXT);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    with pytest.raises(MetadataError):
        Database(tmp_path / "meta.db", migrations=migrations)
    with sqlite3.connect(tmp_path / "meta.db") as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_migrations")]
    assert "half_done" not in tables and "transfers" in tables
    assert versions == SHIPPED


def test_schema_newer_than_the_program_is_refused(tmp_path: Path) -> None:
    Database(tmp_path / "meta.db").close()
    with sqlite3.connect(tmp_path / "meta.db") as raw:
        raw.execute("INSERT INTO schema_migrations VALUES (99, '0099_future.sql', 'x')")
    with pytest.raises(MetadataError, match="newer"):
        Database(tmp_path / "meta.db")


def test_unopenable_path_is_a_metadata_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataError):
        Database(tmp_path / "missing-dir" / "meta.db")


def test_wal_and_normal_sync_hold_again_when_an_existing_database_is_reopened(
    tmp_path: Path,
) -> None:
    Database(tmp_path / "meta.db").close()
    with sqlite3.connect(tmp_path / "meta.db") as raw:  # WAL is a property of the file
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Database(tmp_path / "meta.db") as reopened:  # synchronous is per connection
        assert reopened._query("PRAGMA synchronous")[0][0] == 1


def test_full_database_is_reported_as_disk_full_and_recovers_when_space_returns(
    db: Database,
) -> None:
    from gateway.replies import DISK_FULL, reply_for_exception

    pages = db._query("PRAGMA page_count")[0][0]
    db._query(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, no mock
    with pytest.raises(MetadataError) as full:
        for number in range(200):
            add_transfer(db, f"t{number}", subject="x" * 2000)
    assert reply_for_exception(full.value) == DISK_FULL
    db._query(f"PRAGMA max_page_count = {pages * 1000}")
    add_transfer(db, "after")
    assert db.transfer("after") is not None


# -- writes, transactions, constraints -------------------------------------------------


def test_transfer_round_trips_with_utc_timestamps(db: Database) -> None:
    add_transfer(db, created_at=datetime(2024, 4, 1, 18, 0, tzinfo=JST), password_sealed=b"\0s")
    row = db.transfer("t1")
    assert row is not None
    assert row.created_at == datetime(2024, 4, 1, 9, 0, tzinfo=timezone.utc)
    assert row.created_at.tzinfo == timezone.utc
    assert (row.subject, row.state, row.password_sealed) == ("見積書", "pending", b"\0s")
    assert db.transfer("nope") is None


def test_naive_timestamp_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="aware"):
        add_transfer(db, created_at=datetime(2024, 4, 1, 9, 0))


def test_transaction_rolls_back_everything_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        with db.transaction():
            add_transfer(db)
            add_file(db, "f1")
            add_link(db, "l1")
            db.append_event("stored", T0, transfer_id="t1")
            raise RuntimeError("rewrite failed")
    assert [count(db, t) for t in ("transfers", "files", "links", "events")] == [0, 0, 0, 0]


def test_transaction_commits_all_inserts_together(db: Database) -> None:
    with db.transaction():
        add_transfer(db)
        add_file(db, "f1")
        add_link(db, "l1")
        assert count(db, "transfers") == 0  # another connection sees nothing yet
    assert [count(db, t) for t in ("transfers", "files", "links")] == [1, 1, 1]


def test_failed_nested_block_is_undone_while_the_outer_one_commits(db: Database) -> None:
    with db.transaction():
        add_transfer(db)
        with pytest.raises(MetadataError):
            with db.transaction():
                add_link(db, "l1")
                add_link(db, "l2", token_hash=hash_token("token-l1"))  # duplicate hash
    assert db.transfer("t1") is not None
    assert db.links_of("t1") == []


def test_file_of_an_unknown_transfer_is_refused_by_the_foreign_key(db: Database) -> None:
    with pytest.raises(MetadataError):
        add_file(db, "f1", transfer_id="ghost")


def test_unknown_state_is_refused(db: Database) -> None:
    add_transfer(db)
    with pytest.raises(MetadataError):
        db.set_transfer_state("t1", "exploded")


def test_closed_database_raises_metadata_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.close()
    with pytest.raises(MetadataError):
        db.transfer("t1")


# -- links, deliveries, lookups --------------------------------------------------------


def test_links_activate_fail_and_are_found_by_token_hash(db: Database) -> None:
    add_transfer(db)
    for link_id in ("l1", "l2", "l3"):
        add_link(db, link_id)
    db.activate_link("l1", T0 + timedelta(minutes=1))
    db.fail_links(["l2", "l3"])
    states = {link.id: (link.state, link.activated_at) for link in db.links_of("t1")}
    assert states == {
        "l1": ("active", T0 + timedelta(minutes=1)),
        "l2": ("failed", None),
        "l3": ("failed", None),
    }
    found = db.link_by_token_hash(hash_token("token-l1"))
    assert found is not None and found.recipient == "l1@example.com"
    assert db.link_by_token_hash(hash_token("unknown")) is None


def test_claim_download_counts_up_to_the_limit_on_active_links_only(db: Database) -> None:
    add_transfer(db)
    add_link(db, "limited", max_downloads=2)
    add_link(db, "unlimited")
    assert not db.claim_download("limited")  # still pending
    db.activate_link("limited", T0)
    db.activate_link("unlimited", T0)
    assert [db.claim_download("limited") for _ in range(3)] == [True, True, False]
    assert all(db.claim_download("unlimited") for _ in range(5))
    counts = {link.id: link.download_count for link in db.links_of("t1")}
    assert counts == {"limited": 2, "unlimited": 5}


def test_delivered_recipients_are_per_message_and_first_record_wins(db: Database) -> None:
    db.record_delivery("fp-a", "hanako@example.com", T0, transfer_id="t1", link_id="l1")
    db.record_delivery("fp-a", "jiro@example.com", T0)
    db.record_delivery("fp-a", "hanako@example.com", T0 + timedelta(hours=1), link_id="other")
    db.record_delivery("fp-b", "saburo@example.com", T0)
    assert db.delivered_recipients("fp-a") == {"hanako@example.com", "jiro@example.com"}
    assert db.delivered_recipients("fp-none") == set()
    rows = db._query("SELECT link_id FROM deliveries WHERE recipient = 'hanako@example.com'")
    assert rows[0][0] == "l1"


def test_transfer_by_fingerprint_returns_the_latest_that_did_not_fail(db: Database) -> None:
    add_transfer(db, "old", fingerprint="fp", created_at=T0)
    add_transfer(db, "newer", fingerprint="fp", created_at=T0 + timedelta(minutes=5))
    add_transfer(db, "newest", fingerprint="fp", created_at=T0 + timedelta(minutes=9))
    db.set_transfer_state("newest", "failed")
    found = db.transfer_by_fingerprint("fp")
    assert found is not None and found.id == "newer"
    assert db.transfer_by_fingerprint("other") is None


def test_files_come_back_in_position_order(db: Database) -> None:
    add_transfer(db)
    add_file(db, "fb", position=1)
    add_file(db, "fa", position=0)
    files = db.files_of("t1")
    assert [f.id for f in files] == ["fa", "fb"]
    assert files[0].wrapped_key == b"\x01wrapped-key-fa" and files[0].display_name == "資料.zip"


# -- events ----------------------------------------------------------------------------


def test_events_are_appended_and_filtered_by_transfer(db: Database) -> None:
    db.append_event("stored", T0, transfer_id="t1", detail={"files": 2, "名前": "資料"})
    db.append_event("sent", T0, transfer_id="t1", link_id="l1", recipient="a@example.com")
    db.append_event("startup", T0)
    assert [e.kind for e in db.events()] == ["stored", "sent", "startup"]
    mine = db.events("t1")
    assert [e.kind for e in mine] == ["stored", "sent"]
    assert mine[0].detail == {"files": 2, "名前": "資料"} and mine[1].detail == {}
    assert mine[1].at == T0


def test_events_cannot_be_updated_or_deleted_even_from_outside(db: Database) -> None:
    db.append_event("stored", T0, transfer_id="t1")
    with pytest.raises(MetadataError, match="append-only"):
        db._write("UPDATE events SET kind = 'forged'")
    with pytest.raises(MetadataError, match="append-only"):
        db._write("DELETE FROM events")
    with sqlite3.connect(db.path) as raw:  # the triggers live in the file, not in our code
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM events")
    assert [e.kind for e in db.events()] == ["stored"]


# -- cleanup ---------------------------------------------------------------------------


def test_stale_pending_and_failed_or_expired_transfers_are_listed(db: Database) -> None:
    add_transfer(db, "stale", created_at=T0)
    add_transfer(db, "fresh", created_at=T0 + timedelta(hours=2))
    add_transfer(db, "failed", created_at=T0 + timedelta(hours=2), state="failed")
    add_transfer(db, "expired", state="active", expires_at=T0 + timedelta(days=1))
    add_transfer(db, "live", state="active", expires_at=T0 + timedelta(days=30))
    add_transfer(db, "purged", state="purged", expires_at=T0 + timedelta(days=1))
    assert db.stale_pending_transfers(T0 + timedelta(hours=1)) == ["stale"]
    now = T0 + timedelta(days=2)
    assert set(db.failed_or_expired_transfers(now)) == {"failed", "expired"}


def test_a_link_becomes_active_with_its_transfer_only_while_the_transfer_has_its_files(
    db: Database,
) -> None:
    for transfer_id, state in (("live", "pending"), ("purged", "purged"), ("failed", "failed")):
        add_transfer(db, transfer_id, state=state)
        add_link(db, f"{transfer_id}-l", transfer_id=transfer_id)
    assert db.activate_link("live-l", T0)
    assert db.transfer("live").state == "active"
    assert not db.activate_link("live-l", T0), "a link is activated once"
    for transfer_id in ("purged", "failed"):
        assert not db.activate_link(f"{transfer_id}-l", T0)
        assert [link.state for link in db.links_of(transfer_id)] == ["pending"]
        assert db.transfer(transfer_id).state == transfer_id


def test_a_retry_link_activates_the_pending_links_earlier_attempts_gave_its_recipient(
    db: Database,
) -> None:
    add_transfer(db, "t1")
    add_transfer(db, "t2")
    tanaka = "tanaka@example.com"
    add_link(db, "crashed", recipient=tanaka)  # an attempt killed after the next hop's 250
    add_link(db, "refused", recipient=tanaka, state="failed")
    add_link(db, "other", recipient="suzuki@example.com")
    add_link(db, "elsewhere", transfer_id="t2", recipient=tanaka)
    add_link(db, "retry", recipient=tanaka)
    assert db.activate_earlier_links("retry", T0) == [], "nothing while the retry's link is pending"
    assert db.activate_link("retry", T0)
    assert db.activate_earlier_links("retry", T0 + timedelta(seconds=1)) == ["crashed"]
    states = {link.id: link.state for link in db.links_of("t1")}
    assert states == {"crashed": "active", "refused": "failed", "other": "pending",
                      "retry": "active"}
    assert db.link("crashed").activated_at == T0 + timedelta(seconds=1)
    assert [link.state for link in db.links_of("t2")] == ["pending"]
    assert db.activate_earlier_links("retry", T0) == []


def test_claim_for_purge_takes_only_what_is_still_due(db: Database) -> None:
    now, cutoff = T0 + timedelta(hours=2), T0 + timedelta(hours=1)
    add_transfer(db, "stale", created_at=T0)
    add_transfer(db, "retried", created_at=T0)
    add_link(db, "fresh", transfer_id="retried", created_at=T0 + timedelta(minutes=90))
    add_transfer(db, "expired", state="active", expires_at=now)
    add_transfer(db, "extended", state="active", expires_at=now + timedelta(days=1))
    add_transfer(db, "failed", state="failed")
    assert db.stale_pending_transfers(cutoff) == ["stale"]
    claims = {t: db.claim_for_purge(t, now, cutoff)
              for t in ("stale", "retried", "expired", "extended", "failed", "ghost")}
    assert claims == {"stale": "purged", "retried": None, "expired": "purged",
                      "extended": None, "failed": "failed", "ghost": None}
    assert [db.transfer(t).state for t in ("stale", "retried", "expired", "extended")] == [
        "purged", "pending", "purged", "active"]
    assert not db.reusable("stale", now) and db.reusable("retried", now)


def test_mark_purged_forgets_files_and_password_but_keeps_links_and_events(
    db: Database,
) -> None:
    add_transfer(db, password_hash=hash_password("pw"), password_sealed=b"sealed")
    add_file(db, "f1")
    add_link(db, "l1")
    db.append_event("stored", T0, transfer_id="t1")
    db.mark_purged("t1")
    row = db.transfer("t1")
    assert row is not None and row.state == "purged"
    assert (row.password_hash, row.password_sealed) == (None, None)
    assert db.files_of("t1") == []
    assert len(db.links_of("t1")) == 1 and len(db.events("t1")) == 1
    assert db.failed_or_expired_transfers(T0 + timedelta(days=365)) == []


def test_mark_purged_can_leave_the_transfer_failed(db: Database) -> None:
    add_transfer(db, password_hash="h")
    add_file(db, "f1")
    db.mark_purged("t1", state="failed")
    row = db.transfer("t1")
    assert row is not None and (row.state, row.password_hash) == ("failed", None)
    assert db.files_of("t1") == []
    with pytest.raises(ValueError):
        db.mark_purged("t1", state="active")


def database_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_database_files_never_hold_a_token_or_password_in_clear(tmp_path: Path) -> None:
    token, password = new_token(), generate_password()
    master = bytes(range(32))
    with Database(tmp_path / "meta.db") as db:
        add_transfer(
            db, password_hash=hash_password(password),
            password_sealed=seal_small(master, b"t1", password.encode()),
        )
        add_link(db, "l1", token_hash=hash_token(token))
        db.append_event("sent", T0, transfer_id="t1", link_id="l1")
        found = db.link_by_token_hash(hash_token(token))
        assert found is not None and found.id == "l1"
        stored = database_bytes(db.path)
    assert stored  # the grep below would prove nothing over empty files
    assert token.encode() not in stored and password.encode() not in stored


def test_purged_wrapped_keys_leave_the_database_files(tmp_path: Path) -> None:
    with Database(tmp_path / "meta.db") as db:
        add_transfer(db)
        add_file(db, "f1")
        add_transfer(db, "t2")
        add_file(db, "f2", transfer_id="t2")  # shares the page, which therefore stays in use
        assert b"wrapped-key-f1" in database_bytes(db.path)
        db.mark_purged("t1")
        db.checkpoint()
        assert b"wrapped-key-f1" not in database_bytes(db.path)
        assert b"wrapped-key-f2" in database_bytes(db.path)


# -- threads ---------------------------------------------------------------------------


def test_four_threads_share_one_database_safely(db: Database) -> None:
    errors: list[BaseException] = []

    def work(thread_no: int) -> None:
        try:
            for i in range(40):
                transfer_id = f"t{thread_no}-{i}"
                with db.transaction():
                    add_transfer(db, transfer_id)
                    add_link(db, f"l{thread_no}-{i}", transfer_id=transfer_id)
                    db.append_event("stored", T0, transfer_id=transfer_id)
                db.record_delivery(f"fp-{transfer_id}", "x@example.com", T0)
                assert db.transfer(transfer_id) is not None
                assert len(db.links_of(transfer_id)) == 1
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [count(db, t) for t in ("transfers", "links", "events", "deliveries")] == [160] * 4


# -- passwords and tokens --------------------------------------------------------------


def test_password_hash_verifies_the_password_and_rejects_others() -> None:
    stored = hash_password("Tr0ub4dor&3")
    assert stored.startswith("scrypt$n=32768,r=8,p=1$")
    assert "Tr0ub4dor&3" not in stored
    assert verify_password("Tr0ub4dor&3", stored)
    assert not verify_password("Tr0ub4dor&4", stored)
    assert not verify_password("", stored)


def test_same_password_hashes_differently_each_time() -> None:
    assert hash_password("same") != hash_password("same")


def test_composed_and_decomposed_japanese_passwords_match() -> None:
    stored = hash_password("パスワード")  # precomposed katakana
    assert verify_password("ハ\u309aスワート\u3099", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "bcrypt$n=2,r=1,p=1$AAAA$AAAA",
        "scrypt$n=3,r=8,p=1$AAAA$" + "A" * 43,  # n not a power of two
        "scrypt$n=1073741824,r=8,p=1$AAAA$" + "A" * 43,  # would take minutes and GBs
        "scrypt$n=1024,r=8$AAAA$" + "A" * 43,
        "scrypt$n=1024,r=8,p=1$AAAA$",
        "scrypt$n=1024,r=8,p=1$AAAA$" + "A" * 5000,
        "scrypt$n=x,r=8,p=1$AAAA$AAAA",
    ],
)
def test_malformed_stored_hash_is_a_mismatch_not_a_crash(stored: str) -> None:
    assert verify_password("anything", stored) is False


def test_token_is_192_bits_urlsafe_and_its_hash_is_not_the_token() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert len(token) == 32 and set(token) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )
        digest = hash_token(token)
        assert digest != token and token not in digest
        assert len(digest) == 64 and digest == hash_token(token)


def test_generated_passwords_avoid_look_alike_characters() -> None:
    passwords = [generate_password() for _ in range(200)]
    assert all(len(p) == 12 for p in passwords)
    assert len(set(passwords)) == 200
    used = set("".join(passwords))
    assert used <= set(PASSWORD_ALPHABET) and not used & set("0O1lI")
    assert len(generate_password(20)) == 20
    with pytest.raises(ValueError):
        generate_password(0)


def test_generated_password_hash_is_keyed_and_useless_without_its_key() -> None:
    from gateway.store.passwords import hash_generated_password

    key, other = b"k" * 32, b"o" * 32
    stored = hash_generated_password("Tr0ub4dor&3", key)
    assert stored.startswith("hmac-sha256$") and "Tr0ub4dor" not in stored
    assert verify_password("Tr0ub4dor&3", stored, key)
    assert not verify_password("Tr0ub4dor&4", stored, key)
    assert not verify_password("Tr0ub4dor&3", stored, other)
    assert not verify_password("Tr0ub4dor&3", stored), "no key: never a match"
    assert hash_generated_password("Tr0ub4dor&3", key) != stored, "salted"
    assert verify_password("ハ\u309aスワート\u3099", hash_generated_password("パスワード", key), key)
    for broken in ("hmac-sha256$", "hmac-sha256$AAAA$AAAA", "hmac-sha256$!!$" + "A" * 43):
        assert verify_password("x", broken, key) is False
    assert verify_password("Tr0ub4dor&3", hash_password("Tr0ub4dor&3"), key), "scrypt still works"


def test_transfer_ids_starting_a_prefix_are_a_range_of_the_key(db: Database) -> None:
    """What `revoke` resolves a short id (as `transfers` prints it) through."""
    for transfer_id in ("ab12cd34ef", "ab12cd35ef", "ab12cd35f0", "ab12"):
        add_transfer(db, transfer_id)
    assert db.transfer_ids_starting("ab12cd34", 2) == ["ab12cd34ef"]
    assert db.transfer_ids_starting("ab12cd35", 2) == ["ab12cd35ef", "ab12cd35f0"]
    assert db.transfer_ids_starting("ab12cd3", 5) == ["ab12cd34ef", "ab12cd35ef", "ab12cd35f0"]
    assert db.transfer_ids_starting("ab13", 2) == []
