"""A master-key rotation as an administrator runs it, on real gateways and the real command:
mail stored under the old key; a restart with a new key current and the old one retired (its
links, passwords and sessions keep working, pending notices go out); `ppap-gateway
rotate-master-key` while that gateway serves (a `--check` first, a run without the old key
names the rows it cannot open and exits 1); a second run finds nothing left; a restart with the
new key alone serves every old link and sends every pending notice. On SQLite and, for the
command and the gateway after it, on PostgreSQL with the files in the database."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.clock import FakeClock
from tests.support.portal_http import FILE_ID, Portal
from tests.support.received import body_text, links_in, password_in
from tests.support.running import corpus_mail, send_corpus

ROOT = Path(__file__).resolve().parents[2]
# A generated password (hashed, sealed, mailed 5 minutes later); no notices of downloads.
POLICY = {"password": "recipient-email", "notify_sender": "never"}
COLUMNS = ("current", "moved", "retired", "unknown", "changed", "no key")


def rotate(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "rotate-master-key", "--config", str(config), *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def counts(output: str, kind: str) -> dict[str, int]:
    match = re.search(rf"^{kind}\s+" + r"\s+".join([r"(\d+)"] * 6), output, re.MULTILINE)
    assert match, output
    return dict(zip(COLUMNS, map(int, match.groups())))


def new_key_file(path: Path) -> Path:
    """What an administrator does: `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE`."""
    path.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    os.chmod(path, 0o600)
    return path


def storage(data: Path, database: str, key: Path, retired: list[Path] | None = None,
            **more: str) -> dict:
    return {"data_dir": str(data), "database": database, "master_key_file": str(key),
            "retired_master_key_files": [str(path) for path in retired or []], **more}


def config_file(path: Path, settings: dict) -> Path:
    """The [storage] settings as the administrator's configuration file holds them."""
    lines = [f"{key} = {value!r}" if isinstance(value, str) else
             f"{key} = [{', '.join(repr(item) for item in value)}]"
             for key, value in settings.items()]
    path.write_text('[gateway]\ninternal_domains = ["city.example.lg.jp"]\n[storage]\n'
                    + "\n".join(lines).replace("'", '"') + "\n")
    return path


def converted(running, sink, name: str, already: int) -> tuple[list[str], str]:
    """Send a corpus mail: its link tokens, and the SHA-256 of the file behind them."""
    mail = corpus_mail(name)
    assert send_corpus(running.port, mail)[0] == 250
    notices = sink.wait_for(already + len(mail.rcpt_tos))[already:]
    return (sorted({token for notice in notices for token in links_in(notice.data)}),
            mail.side["attachments"][0]["sha256"])


def passwords_mailed(running, sink, already: int, expected: int) -> set[str]:
    """Let the password notices' delay pass; the passwords they carry."""
    running.advance(minutes=6)
    mails = sink.wait_for(already + expected)[already:]
    return {password_in(body_text(mail.data)) for mail in mails
            if not links_in(mail.data) and "パスワード" in body_text(mail.data)}


def session_for(running, token: str, password: str) -> str:
    portal = Portal(running)
    reply = portal.post(token, "/password", {"csrf": portal.csrf(token), "password": password})
    assert reply.status == 303, reply.text
    return reply.headers["Set-Cookie"].split(";", 1)[0]


def downloaded(running, token: str, cookie: str) -> str:
    """The SHA-256 of the file a browser with `cookie` downloads, or why it cannot."""
    portal = Portal(running)
    if not FILE_ID.search(portal.request(f"/d/{token}", Cookie=cookie).text):
        return "no download button"
    reply = portal.download(token, Cookie=cookie)
    return hashlib.sha256(reply.body).hexdigest() if reply.status == 200 else str(reply.status)


def sealed_outbox_items(database: Path) -> int:
    with sqlite3.connect(database) as raw:
        return raw.execute("SELECT count(*) FROM outbox WHERE sealed IS NOT NULL").fetchone()[0]


def test_a_rotation_on_a_serving_gateway_keeps_every_file_link_and_notice(
        start_gateway, sink, tmp_path):
    data, clock = tmp_path / "data", FakeClock()  # one clock: the restarts take no time
    first = start_gateway({"policy": POLICY}, clock=clock)
    database = str(first.gateway.config.storage.database)
    old_key = first.gateway.config.storage.master_key_file
    tokens_a, sha_a = converted(first, sink, "01_outlook_jis_aes256", 0)
    (password_a,) = passwords_mailed(first, sink, 2, 3)  # two password notices, one receipt
    session_a = session_for(first, tokens_a[0], password_a)
    tokens_b, sha_b = converted(first, sink, "02_thunderbird_rfc2231_longname", 5)
    pending = sealed_outbox_items(Path(database))  # B's password notice and receipt
    assert pending == 2
    first.stop()

    # Every node: the new key current, the old one retired; a rolling restart.
    new_key = new_key_file(tmp_path / "master-2.key")
    rotating = storage(data, database, new_key, [old_key])
    second = start_gateway({"policy": POLICY, "storage": rotating}, clock=clock)
    assert downloaded(second, tokens_a[0], session_a) == sha_a  # the old session cookie
    assert downloaded(second, tokens_a[1], session_for(second, tokens_a[1], password_a)) == sha_a

    checked = rotate(config_file(tmp_path / "rotating.toml", rotating), "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert counts(checked.stdout, "file keys")["retired"] == 2
    assert "without --check" in checked.stdout

    without_old = rotate(config_file(tmp_path / "new-only.toml", storage(data, database, new_key)))
    assert without_old.returncode == 1, without_old.stdout + without_old.stderr
    assert counts(without_old.stdout, "file keys")["no key"] == 2
    assert len(re.findall(r"^no key opens: file keys [0-9a-f]{32}$", without_old.stdout,
                          re.MULTILINE)) == 2

    moved = rotate(config_file(tmp_path / "rotating.toml", rotating))  # while it serves
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert {kind: counts(moved.stdout, kind)["moved"] for kind in (
        "file keys", "outbox secrets", "sealed passwords", "password hashes")} == {
        "file keys": 2, "outbox secrets": pending, "sealed passwords": 2, "password hashes": 2}
    again = rotate(config_file(tmp_path / "rotating.toml", rotating))
    assert again.returncode == 0 and "nothing lies under a retired key" in again.stdout
    assert counts(again.stdout, "file keys") == dict.fromkeys(COLUMNS, 0) | {"current": 2}
    second.stop()

    # The old key gone from every node: its sessions end, everything else stays.
    third = start_gateway({"policy": POLICY, "storage": storage(data, database, new_key)},
                          clock=clock)
    (password_b,) = passwords_mailed(third, sink, 5 + 1, 2)  # B's notice, sealed again
    assert downloaded(third, tokens_b[0], session_for(third, tokens_b[0], password_b)) == sha_b
    assert downloaded(third, tokens_a[0], session_a) == "no download button"
    assert downloaded(third, tokens_a[0], session_for(third, tokens_a[0], password_a)) == sha_a


def test_the_command_rotates_a_postgresql_store_with_its_files_in_the_database(
        start_gateway, sink, tmp_path, postgres_dsn):
    data = tmp_path / "data"
    first = start_gateway({"policy": POLICY, "storage": {
        "database": postgres_dsn, "blobs": "database"}})
    old_key = first.gateway.config.storage.master_key_file
    tokens, sha = converted(first, sink, "02_thunderbird_rfc2231_longname", 0)
    first.stop()

    new_key = new_key_file(tmp_path / "master-2.key")
    rotating = config_file(tmp_path / "rotating.toml", storage(
        data, postgres_dsn, new_key, [old_key], blobs="database"))
    moved = rotate(rotating)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert {kind: counts(moved.stdout, kind)["moved"] for kind in (
        "file keys", "outbox secrets", "sealed passwords", "password hashes")} == {
        "file keys": 1, "outbox secrets": 2, "sealed passwords": 1, "password hashes": 1}
    again = rotate(rotating)
    assert again.returncode == 0 and "nothing lies under a retired key" in again.stdout

    after = start_gateway({"policy": POLICY, "storage": storage(
        data, postgres_dsn, new_key, blobs="database")})
    (password,) = passwords_mailed(after, sink, 1, 2)
    assert downloaded(after, tokens[0], session_for(after, tokens[0], password)) == sha
