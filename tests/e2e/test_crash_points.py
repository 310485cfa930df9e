"""Power cuts at every commit point: `ppap-gateway serve` is killed with SIGKILL there (armed by
PPAP_GATEWAY_CRASH_AT), restarted on the same data directory, and the sending MTA retries the
same bytes. Then: the recipient has the mail exactly once — or twice, only where the next hop
had accepted before we could record it (better twice than lost, as Postfix does) — every link
a delivered mail carries opens (the first copy's too), the sender gets one receipt with a
working management link, a notice cut off before its record goes at most once more with the
same Message-ID, the stored file is intact, and no blob, temp file or half-purged transfer
survives the restart's clean-up."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from gateway.store.blobs import TEMP_PREFIX, BlobStore
from gateway.store.keys import load_or_create_master_key
from gateway.store.passwords import hash_token
from gateway.store.rows import to_text
from tests.support.processes import ROOT, free_port, wait_listening
from tests.support.received import body_text, links_in
from tests.support.running import corpus_mail
from tests.support.sink import ReceivedMessage

MAIL = corpus_mail("01_outlook_jis_aes256")
RECIPIENT = MAIL.rcpt_tos[0]  # one recipient: each window is then hit deterministically
ORIGINAL_ID = "<000d01dde88b$f71ab247$8a0ac984$@city.example.lg.jp>"
PUBLIC_URL = "http://files.test"


@dataclass
class Serve:
    """One `ppap-gateway serve` process on a data directory that outlives it."""

    data: Path
    sink_port: int
    overrides: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.smtp_port, self.portal_port = free_port(), free_port()

    def command(self) -> list[str]:
        data = self.data
        settings = (
            f"smtp.listen=127.0.0.1:{self.smtp_port}", f"portal.listen=127.0.0.1:{self.portal_port}",
            f"admin.listen=127.0.0.1:{free_port()}", f"portal.public_url={PUBLIC_URL}",
            f"next_hop.url=smtp://127.0.0.1:{self.sink_port}", "next_hop.starttls=off",
            "next_hop.timeout=10s", f"storage.data_dir={data}",
            f"storage.database={data}/gw.sqlite3", f"storage.master_key_file={data}/master.key",
            *self.overrides,
        )
        command = [sys.executable, "-m", "gateway", "serve", "--config",
                   str(ROOT / "config" / "gateway.toml")]
        for setting in settings:
            command += ["-o", setting]
        return command

    def launch(self, crash_at: str | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PPAP_GATEWAY_MASTER_KEY", "PPAP_GATEWAY_CRASH_AT")}
        if crash_at:
            env["PPAP_GATEWAY_CRASH_AT"] = crash_at
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        return self.process

    def start(self, crash_at: str | None = None) -> "Serve":
        process = self.launch(crash_at)
        wait_listening(self.smtp_port, process)
        wait_listening(self.portal_port, process)  # it opens after the SMTP listener
        return self

    def wait_killed(self) -> None:
        assert self.process is not None
        self.process.wait(timeout=30)
        assert self.process.returncode == -signal.SIGKILL, self.process.stderr.read()
        self.process.stderr.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.communicate(timeout=30)


@pytest.fixture
def serve(tmp_path, sink):
    started: list[Serve] = []

    def make(*overrides: str) -> Serve:
        started.append(Serve(tmp_path / "data", sink.port, overrides))
        return started[-1]

    yield make
    for one in started:
        one.stop()


def try_send(port: int) -> int | None:
    """The reply code to DATA, or None when the connection died first (no answer)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("mta.test")
            client.mail(MAIL.mail_from)
            client.rcpt(RECIPIENT)
            return client.data(MAIL.raw)[0]
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return None


def message_id(message: ReceivedMessage) -> str:
    return str(BytesHeaderParser().parsebytes(message.data)["Message-ID"]).strip()


def link_mails(messages: list[ReceivedMessage]) -> list[ReceivedMessage]:
    """The rewritten message itself (it keeps the sender's Message-ID)."""
    return [m for m in messages if message_id(m) == ORIGINAL_ID and m.rcpt_tos == [RECIPIENT]]


def notice_mails(messages: list[ReceivedMessage]) -> list[ReceivedMessage]:
    return [m for m in messages if message_id(m) != ORIGINAL_ID]


def tokens_in(messages: list[ReceivedMessage]) -> set[str]:
    return {token for m in messages for token in links_in(m.data)}


def portal_status(serve: Serve, token: str) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{serve.portal_port}/d/{token}", timeout=10
        ) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def rows(data: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{data}/gw.sqlite3?mode=ro", uri=True) as connection:
        return connection.execute(sql).fetchall()


def assert_nothing_orphaned_and_file_intact(data: Path) -> None:
    blobs = BlobStore(data / "blobs", load_or_create_master_key(data / "master.key", None))
    on_disk = set(blobs.iter_blob_ids())
    stored = rows(data, "SELECT blob_id, wrapped_key FROM files")
    assert on_disk == {blob_id for blob_id, _ in stored}, "orphan or missing blob"
    assert not [p for p in (data / "blobs").rglob(f"{TEMP_PREFIX}*")], "temp file left"
    expected = MAIL.side["attachments"][0]["sha256"]
    for blob_id, wrapped_key in stored:
        with blobs.open(blob_id, wrapped_key) as reader:
            assert hashlib.sha256(b"".join(reader)).hexdigest() == expected


def active_links(data: Path) -> dict[str, str]:
    """Token hash → recipient of every link that opens."""
    return dict(rows(data, "SELECT token_hash, recipient FROM links WHERE state = 'active'"))


def assert_only_delivered_links_open(serve: Serve, delivered: set[str]) -> None:
    active = active_links(serve.data)
    assert set(active) == {hash_token(token) for token in delivered}, "a link no mail carries is live"
    assert {token: portal_status(serve, token) for token in delivered} == dict.fromkeys(delivered, 200)


def assert_every_delivered_link_opens(serve: Serve, delivered: set[str]) -> None:
    """Every link a mail carries opens, as a crashed attempt's copy's link must; a live link no
    mail carries can only be an earlier attempt's to the same recipient (its token died with
    the process that made it)."""
    assert {token: portal_status(serve, token) for token in delivered} == dict.fromkeys(delivered, 200)
    active = active_links(serve.data)
    assert {hash_token(token) for token in delivered} <= set(active)
    assert set(active.values()) == {RECIPIENT}, "a live link to someone else"


# point, link mails the recipient ends up with, links that open, and why
WINDOWS = [
    ("store.blobs_written", 1, 1, "blobs without metadata: orphans, removed at start-up"),
    ("store.committed", 1, 2, ("a pending transfer: the retry reuses its files, new link; the "
                               "first attempt's link opens too (no mail carries it: its token "
                               "died with the process)")),
    ("deliver.accepted", 2, 2, ("the next hop had it, we had not recorded it: sent again, and "
                                "the first copy's link opens as well as the retry's")),
    ("relay.recorded", 1, 1, "recorded: the retry is recognised and answered 'already'"),
]


@pytest.mark.parametrize("point, copies, live, why", WINDOWS, ids=[w[0] for w in WINDOWS])
def test_sigkill_at_commit_point_then_retry_loses_nothing(serve, sink, point, copies, live, why):
    first = serve().start(crash_at=point)
    assert try_send(first.smtp_port) is None, "the client must get no reply from a dead gateway"
    first.wait_killed()

    second = serve().start()
    code = try_send(second.smtp_port)  # the sending MTA's retry of the same bytes
    assert code == 250
    mails = link_mails(sink.wait_for(copies))
    time.sleep(0.3)  # a third copy would arrive now
    assert len(link_mails(sink.messages)) == copies, why
    assert_every_delivered_link_opens(second, tokens_in(mails))
    assert len(active_links(second.data)) == live, why
    second.stop()
    assert_nothing_orphaned_and_file_intact(second.data)
    if point == "relay.recorded":
        assert len(rows(second.data, "SELECT id FROM links")) == 1, "no second set of links"


def test_sigkill_after_a_notice_was_sent_sends_it_again_with_the_same_message_id(serve, sink):
    first = serve("policy.password=recipient-email", "policy.password_delay=0s",
                  "policy.sender_receipt=false").start(crash_at="notify.sent")
    code = try_send(first.smtp_port)  # the 250 may or may not beat the worker's crash
    first.wait_killed()
    assert len(notice_mails(sink.messages)) == 1

    second = serve("policy.password=recipient-email", "policy.password_delay=0s",
                   "policy.sender_receipt=false").start()
    if code is None:
        assert try_send(second.smtp_port) == 250
    sink.wait_for(3)
    notices = notice_mails(sink.messages)
    assert len(notices) == 2, "at least once: the unmarked notice goes again"
    assert len({message_id(m) for m in notices}) == 1, "one Message-ID: the copy can be dropped"
    assert len(link_mails(sink.messages)) == 1
    assert_only_delivered_links_open(second, tokens_in(link_mails(sink.messages)))
    second.stop()
    assert rows(second.data, "SELECT state FROM outbox") == [("sent",)]


def make_receipt_due(data: Path) -> None:
    """As if the receipt's minute (RECEIPT_DELAY) had passed while the gateway was stopped;
    the recipient's password notice stays later, so the receipt is the one item due."""
    connection = sqlite3.connect(data / "gw.sqlite3")
    try:
        with connection:
            connection.execute("UPDATE outbox SET due_at = ? WHERE kind = 'receipt'",
                               (to_text(datetime.now(timezone.utc)),))
    finally:
        connection.close()


def receipts(messages: list[ReceivedMessage]) -> list[ReceivedMessage]:
    return [m for m in messages if m.rcpt_tos == [MAIL.mail_from]]


def wait_for_receipts(sink, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
    deadline = time.monotonic() + timeout
    while len(receipts(sink.messages)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # one more would arrive now
    return receipts(sink.messages)


def manage_token_in(receipt: ReceivedMessage) -> str:
    (token,) = re.findall(re.escape(PUBLIC_URL) + r"/m/([A-Za-z0-9_-]+)", body_text(receipt.data))
    return token


def management_page(serve: Serve, token: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{serve.portal_port}/m/{token}", timeout=10
        ) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


@pytest.mark.parametrize("point, copies", [("store.committed", 1), ("deliver.accepted", 2)])
def test_retry_after_a_crash_before_any_link_was_recorded_still_gives_the_sender_a_receipt(
    serve, sink, point, copies
):
    """The first attempt's management token lived only in its memory: the retry that reuses
    the transfer issues a fresh one with the one receipt."""
    first = serve().start(crash_at=point)
    assert try_send(first.smtp_port) is None
    first.wait_killed()
    second = serve().start()
    assert try_send(second.smtp_port) == 250
    sink.wait_for(copies)
    second.stop()
    make_receipt_due(second.data)

    third = serve().start()
    (receipt,) = wait_for_receipts(sink, 1)
    status, page = management_page(third, manage_token_in(receipt))
    assert status == 200 and RECIPIENT in page, "the sender can manage what was sent"
    third.stop()
    assert rows(third.data, "SELECT state FROM outbox WHERE kind = 'receipt'") == [("sent",)]


def test_sigkill_while_the_receipt_is_sent_sends_it_at_most_twice_with_one_message_id(
    serve, sink
):
    first = serve().start()
    assert try_send(first.smtp_port) == 250
    sink.wait_for(1)
    first.stop()
    make_receipt_due(first.data)

    second = serve()
    second.launch(crash_at="notify.sent")  # the receipt is due at start: sent, then the kill
    second.wait_killed()
    assert len(receipts(sink.messages)) == 1

    third = serve().start()
    sent = wait_for_receipts(sink, 2)
    assert len(sent) == 2, "at least once: the unmarked receipt goes again, and only once more"
    assert len({message_id(m) for m in sent}) == 1, "one Message-ID: the copy can be dropped"
    assert sent[0].data == sent[1].data
    status, _ = management_page(third, manage_token_in(sent[1]))
    assert status == 200
    third.stop()
    assert rows(third.data, "SELECT state FROM outbox WHERE kind = 'receipt'") == [("sent",)]


def test_sigkill_in_purge_between_blobs_and_rows_is_finished_by_the_restart(serve, sink):
    lifetime = ("policy.link_lifetime=1s",)
    first = serve(*lifetime).start()
    assert try_send(first.smtp_port) == 250
    (token,) = tokens_in(link_mails(sink.wait_for(1)))
    first.stop()
    time.sleep(1.2)  # the link expires

    second = serve(*lifetime)
    second.launch(crash_at="purge.blobs_deleted")  # the start-up clean-up purges, and dies
    second.wait_killed()
    assert rows(second.data, "SELECT count(*) FROM files") == [(1,)], "rows outlived blobs"
    assert not list(BlobStore(second.data / "blobs", b"\0" * 32).iter_blob_ids())

    third = serve(*lifetime).start()
    assert portal_status(third, token) != 200
    third.stop()
    assert rows(third.data, "SELECT state FROM transfers") == [("purged",)]
    assert rows(third.data, "SELECT count(*) FROM files") == [(0,)]
    assert_nothing_orphaned_and_file_intact(third.data)


def test_unknown_crash_point_refuses_to_start(serve):
    process = serve().launch(crash_at="store.nowhere")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "unknown crash point 'store.nowhere'" in stderr
