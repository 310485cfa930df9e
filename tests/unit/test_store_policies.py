"""The policy snapshot a transfer keeps (gateway/store/policies.py, migration 0005): its JSON
form, read back exactly, refused when it is not what this program writes; NULL for transfers
stored before the migration."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.config import Policy
from gateway.store.db import Database
from gateway.store.policies import (
    SNAPSHOT_VERSION,
    PolicySnapshotError,
    policy_from_json,
    policy_to_json,
    stored_policy,
)

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=timezone.utc)
BUNDLED = Path(__file__).resolve().parents[2] / "gateway" / "store" / "migrations" / "sqlite"

UNUSUAL = Policy(
    convert="all-attachments", link_lifetime=timedelta(days=3, hours=4),
    max_link_lifetime=timedelta(days=45), max_downloads=5, password="webhook",
    password_length=20, locale="en", convert_signed=True, encrypted_mail="pass",
    password_delay=timedelta(milliseconds=250), verify_recipient=True, sender_receipt=False,
    notify_sender="every-download", password_mail_window=timedelta(minutes=90),
    password_mail="replace", keep_original_zip=True, on_scan_error="allow",
)


@pytest.mark.parametrize("policy", [Policy(), UNUSUAL], ids=["defaults", "unusual"])
def test_round_trip_gives_the_same_policy(policy: Policy) -> None:
    assert policy_from_json(policy_to_json(policy)) == policy


def test_every_policy_field_is_in_the_snapshot() -> None:
    """A field added to Policy must be added to the snapshot (and its older versions read)."""
    written = json.loads(policy_to_json(Policy()))
    assert set(written["policy"]) == {f.name for f in fields(Policy)}


def test_the_stored_form_is_versioned_seconds_and_strings() -> None:
    written = json.loads(policy_to_json(UNUSUAL))
    assert written["version"] == SNAPSHOT_VERSION == 1
    values = written["policy"]
    assert values["link_lifetime"] == 273600 and isinstance(values["link_lifetime"], int)
    assert values["password_delay"] == 0.25
    assert values["password_mail"] == "replace" and values["keep_original_zip"] is True
    assert values["max_downloads"] == 5


def test_a_version_one_snapshot_as_written_today_still_reads() -> None:
    """The stored form is a promise to every transfer already kept: this text must keep reading."""
    text = (
        '{"policy":{"convert":"encrypted-zip","convert_signed":false,"encrypted_mail":"refuse",'
        '"keep_original_zip":false,"link_lifetime":604800,"locale":"ja","max_downloads":0,'
        '"max_link_lifetime":2592000,"notify_sender":"first-download","on_scan_error":"tempfail",'
        '"password":"none","password_delay":300,"password_length":12,"password_mail":"suppress",'
        '"password_mail_window":3600,"sender_receipt":true,"verify_recipient":false},'
        '"version":1}'
    )
    assert policy_from_json(text) == Policy()
    assert policy_to_json(Policy()) == text


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.pop("version"), "version"),
    (lambda d: d["policy"].pop("password_mail"), "missing"),
    (lambda d: d["policy"].update(surprise=1), "unknown"),
    (lambda d: d["policy"].update(password_mail="forward"), "password_mail"),
    (lambda d: d["policy"].update(keep_original_zip=1), "keep_original_zip"),
    (lambda d: d["policy"].update(max_downloads=True), "max_downloads"),
    (lambda d: d["policy"].update(max_downloads=-1), "max_downloads"),
    (lambda d: d["policy"].update(link_lifetime="7d"), "link_lifetime"),
    (lambda d: d["policy"].update(link_lifetime=-1), "link_lifetime"),
    (lambda d: d.update(policy=[]), "snapshot"),
])
def test_what_this_program_did_not_write_is_refused(change, problem: str) -> None:
    document = json.loads(policy_to_json(Policy()))
    change(document)
    with pytest.raises(PolicySnapshotError, match=problem):
        policy_from_json(json.dumps(document))


@pytest.mark.parametrize("text", ["", "not json", "null", "[]", '{"version":1}'])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(PolicySnapshotError):
        policy_from_json(text)


def add_transfer(db: Database, transfer_id: str, policy: str | None) -> None:
    db.insert_transfer(
        id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@example.jp>",
        sender="taro@example.jp", department="sales", subject="見積書", created_at=T0,
        expires_at=T0 + timedelta(days=7), password_channel="none", locale="ja", policy=policy,
    )


def test_the_snapshot_is_kept_with_the_transfer_row(tmp_path: Path) -> None:
    with Database(tmp_path / "meta.db") as db:
        add_transfer(db, "t1", policy_to_json(UNUSUAL))
        add_transfer(db, "t2", None)
        assert stored_policy(db.transfer("t1")) == UNUSUAL
        assert db.transfer("t2").policy is None and stored_policy(db.transfer("t2")) is None


def test_an_unreadable_snapshot_is_logged_and_none(tmp_path: Path, caplog) -> None:
    with Database(tmp_path / "meta.db") as db:
        add_transfer(db, "t1", '{"version": 99, "policy": {}}')
        assert stored_policy(db.transfer("t1")) is None
    assert "unreadable policy snapshot" in caplog.text


def test_transfers_from_before_the_migration_have_no_snapshot(tmp_path: Path) -> None:
    """A database made by the program before 0005: its transfers keep working, with NULL."""
    old = tmp_path / "old-migrations"
    old.mkdir()
    for script in sorted(BUNDLED.glob("000[1-4]_*.sql")):
        shutil.copy(script, old / script.name)
    Database(tmp_path / "meta.db", migrations=old).close()
    with sqlite3.connect(tmp_path / "meta.db") as raw:  # the row as the old program wrote it
        raw.execute(
            "INSERT INTO transfers (id, fingerprint, message_id, sender, department, subject,"
            " created_at, expires_at, state, password_channel, locale) VALUES"
            " ('old', 'fp', '<m@example.jp>', 'taro@example.jp', 'sales', 's',"
            " '2026-04-01T09:00:00.000000Z', '2026-04-08T09:00:00.000000Z', 'active', 'none',"
            " 'ja')"
        )
    with Database(tmp_path / "meta.db") as db:
        row = db.transfer("old")
        assert row is not None and row.policy is None
        assert stored_policy(row) is None
        add_transfer(db, "new", policy_to_json(replace(Policy(), password_mail="pass")))
        assert stored_policy(db.transfer("new")).password_mail == "pass"
    with sqlite3.connect(tmp_path / "meta.db") as raw:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_migrations")]
    # Every bundled migration ran on the old database, 0005 (the policy snapshot) among them.
    assert 5 in versions and versions[-1] == len(list(BUNDLED.glob("*.sql")))
