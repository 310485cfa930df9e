"""Master-key rotation on a real store (SQLite in a temporary directory, real blob files): what a
PPAP mail left under the old key (file keys, an unlocked file's key, outbox secrets, the sealed
download password and its keyed hash) still opens once the old key is retired, rotate_master_keys
moves all of it to the new key, after which it opens with the new key alone, and a second run
finds nothing to do; a key that is missing leaves rows reported by id. Also the key ring itself:
how retired keys are given, and what is refused."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.app import load_master_keys, open_store
from gateway.config import ConfigError, build_config
from gateway.model import Envelope
from gateway.ops.rotate_keys import format_report, rotate_master_keys
from gateway.outbound.dkim import DkimSigner
from gateway.pipeline.notice import make_template_env
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.relay import Relay
from gateway.pipeline.store_step import TransferWriter
from gateway.store.blobs import BlobStore
from gateway.store.crypto import IntegrityError, open_small, seal_small
from gateway.store.db import Database
from gateway.store.keys import (
    DOWNLOAD_PASSWORD_KEY,
    KeyRing,
    MasterKeyError,
    load_retired_master_keys,
    master_key_ring,
)
from gateway.store.outbox import OutboxStore
from gateway.store.passwords import verify_password
from gateway.store.rewrapping import RewrappingRows
from gateway.store.unlocks import ExtractedRow, UnlockStore
from tests.support import evasions as ev
from tests.support.accepting_hop import AcceptingNextHop
from tests.support.clock import FakeClock

EXTRACTED = b"the file the sender's password unlocked\n" * 100


@dataclass
class StoredMail:
    """A store holding one converted PPAP mail with a generated password, made under one key."""

    db: Database
    blob_dir: Path
    transfer_id: str
    clock: FakeClock

    def files(self, keys: KeyRing | bytes) -> dict[str, bytes]:
        """Every stored file's plaintext (unlocked ones too), read as the portal reads it."""
        blobs = BlobStore(self.blob_dir, keys)
        rows = [*self.db.files_of(self.transfer_id),
                *UnlockStore(self.db).extracted_of(self.transfer_id)]
        opened = {}
        for row in rows:
            with blobs.open(row.blob_id, row.wrapped_key) as reader:
                opened[row.id] = b"".join(reader)
        return opened

    def outbox_secrets(self, keys: KeyRing | bytes) -> dict[str, bytes]:
        """Each pending outbox item's secrets, opened as the notice composer opens them."""
        return {item.id: open_small(keys, item.id.encode(), item.sealed)
                for item in OutboxStore(self.db).items() if item.sealed is not None}

    def password(self, keys: KeyRing | bytes) -> str:
        transfer = self.db.transfer(self.transfer_id)
        return open_small(keys, self.transfer_id.encode(), transfer.password_sealed).decode()

    def password_checks(self, password: str, keys: KeyRing) -> bool:
        """Whether the portal, given these master keys, accepts the download password."""
        derived = keys.derive(DOWNLOAD_PASSWORD_KEY)
        stored = self.db.transfer(self.transfer_id).password_hash
        return verify_password(password, stored, derived.current, derived.retired)

    def sealed_columns(self) -> list[tuple]:
        """Everything sealed or keyed under a master key, as the database holds it."""
        with sqlite3.connect(self.db.path) as raw:
            return [*raw.execute("SELECT id, wrapped_key FROM files ORDER BY id"),
                    *raw.execute("SELECT id, wrapped_key FROM extracted_files ORDER BY id"),
                    *raw.execute("SELECT id, sealed FROM outbox WHERE sealed IS NOT NULL"
                                 " ORDER BY id"),
                    *raw.execute("SELECT password_hash, password_sealed FROM transfers")]

    def rotate(self, keys: KeyRing, check: bool = False):
        return rotate_master_keys(self.db, keys, self.clock(), check=check)


def store_mail(tmp_path: Path, key: bytes) -> StoredMail:
    config = build_config({
        "gateway": {"internal_domains": ["city.example.lg.jp"]},
        "storage": {"data_dir": str(tmp_path / "data")},
        "portal": {"public_url": "https://files.city.example.lg.jp"},
        "policy": {"password": "recipient-email"},
    }, environ={})
    db, blobs = open_store(config, key)
    clock = FakeClock()
    relay = Relay(
        config, db, TransferWriter(db, blobs, key, config.storage.chunk_size),
        AcceptingNextHop(), DkimSigner([]), make_template_env(config.gateway.templates_dir),
        clock, NoticeQueue(db, key),
    )
    outcome = asyncio.run(relay.handle(Envelope(ev.SENDER, (ev.EXTERNAL,)), ev.ordinary()))
    assert outcome.reply.code == 250 and outcome.transfer_id
    (original,) = db.files_of(outcome.transfer_id)
    info = blobs.write([EXTRACTED])
    assert UnlockStore(db).record(outcome.transfer_id, "unlocked", "sender", clock(), extracted=(
        ExtractedRow("x" * 32, outcome.transfer_id, original.id, "a.txt", info.size,
                     info.sha256, info.blob_id, info.wrapped_key, 0),))
    return StoredMail(db, tmp_path / "data" / "blobs", outcome.transfer_id, clock)


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    return secrets.token_bytes(32), secrets.token_bytes(32)


@pytest.fixture
def stored(tmp_path: Path, keys) -> StoredMail:
    made = store_mail(tmp_path, keys[0])
    yield made
    made.db.close()


def counts(report) -> dict[str, tuple[int, int, int, int, int, int]]:
    return {kind.name: (kind.current, kind.moved, kind.retired, kind.unknown, kind.changed,
                        len(kind.unopenable)) for kind in report.kinds}


def test_what_the_old_key_sealed_opens_while_it_is_retired_and_with_the_new_key_once_moved(
        stored, keys):
    old, new = keys
    files, secrets_, password = stored.files(old), stored.outbox_secrets(old), stored.password(old)
    assert len(files) == 2 and EXTRACTED in files.values()
    assert len(secrets_) == 2  # the recipient's password notice and the sender's receipt
    rotating = KeyRing(new, (old,))

    # The new key is current, the old one retired: everything still opens, nothing was moved.
    assert stored.files(rotating) == files
    assert stored.outbox_secrets(rotating) == secrets_
    assert stored.password(rotating) == password
    assert stored.password_checks(password, rotating)
    with pytest.raises(IntegrityError):
        stored.outbox_secrets(new)  # the new key alone does not (yet)

    # --check counts and writes nothing.
    before = stored.sealed_columns()
    checked = stored.rotate(rotating, check=True)
    assert stored.sealed_columns() == before
    assert counts(checked) == {
        "file keys": (0, 0, 1, 0, 0, 0), "unlocked file keys": (0, 0, 1, 0, 0, 0),
        "outbox secrets": (0, 0, 2, 0, 0, 0), "sealed passwords": (0, 0, 1, 0, 0, 0),
        "password hashes": (0, 0, 1, 0, 0, 0)}
    expires_at = stored.db.transfer(stored.transfer_id).expires_at
    assert checked.kinds[0].needed_until == expires_at and not checked.unopenable

    moved = stored.rotate(rotating)
    assert counts(moved) == {
        "file keys": (0, 1, 0, 0, 0, 0), "unlocked file keys": (0, 1, 0, 0, 0, 0),
        "outbox secrets": (0, 2, 0, 0, 0, 0), "sealed passwords": (0, 1, 0, 0, 0, 0),
        "password hashes": (0, 1, 0, 0, 0, 0)}
    after = stored.sealed_columns()
    assert not set(after) & set(before), "every sealed value was written again"

    # The old key gone: the same files, secrets and password, under the new key alone.
    alone = KeyRing(new)
    assert stored.files(alone) == files
    assert stored.outbox_secrets(alone) == secrets_
    assert stored.password(alone) == password
    assert stored.password_checks(password, alone)
    assert not stored.password_checks(password, KeyRing(old)), "the hash was made again"
    # A node that only reads the new key (the old one still current: step 2 of the procedure).
    assert stored.files(KeyRing(old, (new,))) == files

    again = stored.rotate(rotating)
    assert stored.sealed_columns() == after, "a second run writes nothing"
    assert {name: (c[0], c[1]) for name, c in counts(again).items()} == {
        "file keys": (1, 0), "unlocked file keys": (1, 0), "outbox secrets": (2, 0),
        "sealed passwords": (1, 0), "password hashes": (1, 0)}
    out = io.StringIO()
    format_report(again, out)
    assert "nothing lies under a retired key" in out.getvalue()


def test_rows_no_key_opens_are_named_and_left_as_they_are(stored, keys):
    old, new = keys
    before = stored.sealed_columns()
    wrong = KeyRing(new, (secrets.token_bytes(32),))  # the old key missing, another given

    report = stored.rotate(wrong)

    assert stored.sealed_columns() == before
    assert report.unopenable
    unopenable = {kind.name: kind.unopenable for kind in report.kinds}
    (file_row,) = stored.db.files_of(stored.transfer_id)
    assert unopenable["file keys"] == [file_row.id]
    assert unopenable["unlocked file keys"] == ["x" * 32]
    assert sorted(unopenable["outbox secrets"]) == sorted(
        item.id for item in OutboxStore(stored.db).items() if item.sealed)
    assert unopenable["sealed passwords"] == [stored.transfer_id]
    out = io.StringIO()
    format_report(report, out)
    assert f"no key opens: file keys {file_row.id}" in out.getvalue()
    assert stored.files(KeyRing(new, (old,))), "with the right key it all opens still"


def test_a_row_changed_between_read_and_write_is_not_overwritten(stored, keys):
    rows = RewrappingRows(stored.db)
    (wrapped,) = rows.sealed_values("files", "", 10)
    assert rows.sealed_values("files", wrapped.row_id, 10) == []  # pages follow the id
    (item, _receipt) = rows.sealed_values("outbox", "", 10)
    (password,) = rows.transfer_passwords("", 10)
    replacement = seal_small(keys[1], b"unused", b"x")
    with sqlite3.connect(stored.db.path) as raw:  # meanwhile: another run, the notice sent, …
        raw.execute("UPDATE files SET wrapped_key = ?", (b"another run's",))
        raw.execute("UPDATE outbox SET sealed = ? WHERE id = ?", (b"wiped", item.row_id))
        raw.execute("UPDATE transfers SET password_hash = 'made again'")

    assert rows.replace_sealed("files", [(wrapped, replacement)]) == set()
    assert rows.replace_sealed("outbox", [(item, replacement)]) == set()
    assert rows.replace_passwords([(password, "new hash", replacement)]) == set()
    assert stored.db.files_of(stored.transfer_id)[0].wrapped_key == b"another run's"
    assert OutboxStore(stored.db).get(item.row_id).sealed == b"wiped"
    transfer = stored.db.transfer(stored.transfer_id)
    assert (transfer.password_hash, transfer.password_sealed) == (
        "made again", password.password_sealed)
    stored.db.mark_purged(stored.transfer_id)  # the purge took the row: nothing to write
    assert rows.replace_sealed("files", [(wrapped, replacement)]) == set()


def test_a_password_hash_without_its_sealed_password_is_counted_until_it_expires(stored, keys):
    old, new = keys
    with sqlite3.connect(stored.db.path) as raw:
        raw.execute("UPDATE transfers SET password_sealed = NULL")
    report = stored.rotate(KeyRing(new, (old,)))
    hashes = next(kind for kind in report.kinds if kind.name == "password hashes")
    assert (hashes.unknown, hashes.moved) == (1, 0)
    assert hashes.needed_until == stored.db.transfer(stored.transfer_id).expires_at
    out = io.StringIO()
    format_report(report, out)
    assert "keep the retired keys until" in out.getvalue()


def test_one_time_codes_not_yet_used_are_counted_with_their_last_expiry(stored, keys):
    from gateway.store.controls import ControlsStore

    old, new = keys
    (link,) = stored.db.links_of(stored.transfer_id)
    now = stored.clock()
    ControlsStore(stored.db).issue_otp(link.id, "mac", now, now + timedelta(minutes=10),
                                       timedelta(seconds=30), 5)
    report = stored.rotate(KeyRing(new, (old,)))
    assert (report.live_codes, report.codes_until) == (1, now + timedelta(minutes=10))
    later = rotate_master_keys(stored.db, KeyRing(new), now + timedelta(minutes=11))
    assert later.live_codes == 0


# -- the key ring -----------------------------------------------------------------------------


def key_file(path: Path, key: bytes, mode: int = 0o600) -> Path:
    path.write_text(base64.b64encode(key).decode() + "\n")
    os.chmod(path, mode)
    return path


def test_retired_keys_come_from_files_and_one_variable_separated_by_commas_or_spaces(tmp_path):
    a, b, c = (secrets.token_bytes(32) for _ in range(3))
    text = f" {base64.b64encode(b).decode()},\n {base64.b64encode(c).decode()} "
    assert load_retired_master_keys((key_file(tmp_path / "a.key", a),), text) == (a, b, c)
    assert load_retired_master_keys((), None) == ()
    with pytest.raises(MasterKeyError, match="retired master key 2 from the environment"):
        load_retired_master_keys((), f"{base64.b64encode(b).decode()} bm90IGEga2V5")
    with pytest.raises(MasterKeyError, match="must be mode 0600"):
        load_retired_master_keys((key_file(tmp_path / "loose.key", a, 0o644),), None)
    with pytest.raises(MasterKeyError, match="cannot open"):
        load_retired_master_keys((tmp_path / "missing.key",), None)


def test_a_retired_key_equal_to_the_current_one_or_given_twice_is_refused():
    a, b = secrets.token_bytes(32), secrets.token_bytes(32)
    with pytest.raises(MasterKeyError, match="is the current key"):
        master_key_ring(a, (b, a))
    with pytest.raises(MasterKeyError, match="given twice"):
        master_key_ring(a, (b, b))
    ring = master_key_ring(a, (b,))
    assert ring.all == (a, b)
    assert a.hex() not in repr(ring) and repr(a) not in repr(ring)


def test_the_gateway_reads_the_ring_from_its_configuration_once(tmp_path):
    current, retired = secrets.token_bytes(32), secrets.token_bytes(32)
    other = secrets.token_bytes(32)
    data = tmp_path / "data"
    data.mkdir()
    document = {"storage": {
        "data_dir": str(data), "master_key_file": str(key_file(tmp_path / "new.key", current)),
        "retired_master_key_files": [str(key_file(tmp_path / "old.key", retired))],
        "retired_master_keys_env": "RETIRED_KEYS"}}
    environ = {"RETIRED_KEYS": base64.b64encode(other).decode()}
    config = build_config(document, environ=environ)
    assert environ["RETIRED_KEYS"] not in repr(config.storage)
    assert load_master_keys(config) == KeyRing(current, (retired, other))

    with pytest.raises(ConfigError, match=r"retired_master_keys_env.*\$RETIRED_KEYS is not set"):
        build_config(document, environ={})
    environ = {"RETIRED_KEYS": base64.b64encode(current).decode()}
    with pytest.raises(ConfigError, match="retired_master_key_files.*is the current key"):
        load_master_keys(build_config(document, environ=environ))
