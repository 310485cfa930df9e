"""The one failure → reply table: our trouble is temporary, and no exception text leaks
(checked on the table, and in real SMTP sessions where the relay or the handler breaks)."""

import asyncio
import errno
import ipaddress
import logging
import re
import sqlite3
from contextlib import closing

import aiosmtplib
import pytest

from gateway.app import Gateway
from gateway.config import SmtpSettings
from gateway.errors import RewriteError, UnparseableMessage
from gateway.log import MessageLogger
from gateway.replies import (
    INTERNAL_ERROR,
    STORAGE_UNAVAILABLE,
    Reply,
    reply_for_exception,
)
from gateway.smtp.access import RelayAccess
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.server import start_smtp_server
from gateway.store.blobs import StorageError
from gateway.store.db import MetadataError
from gateway.store.keys import MasterKeyError, load_or_create_master_key
from tests.support.running import RunningGateway, corpus_mail, make_config, send_corpus


def test_unknown_errors_are_temporary_451():
    assert reply_for_exception(RuntimeError("secret detail")).render().startswith("451 4.3.0")
    assert "secret detail" not in reply_for_exception(RuntimeError("secret detail")).render()


def test_storage_errors_are_451_and_disk_full_is_452():
    for error in (StorageError("x"), MetadataError("x"), MasterKeyError("x")):
        assert reply_for_exception(error).code == 451
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise StorageError("cannot store") from inner
    except StorageError as wrapped:
        reply = reply_for_exception(wrapped)
    assert (reply.code, reply.enhanced) == (452, "4.3.1")


def test_content_we_cannot_handle_is_refused_with_a_named_reason():
    assert reply_for_exception(RewriteError("deep")).render().startswith("554 5.6.0")
    assert reply_for_exception(UnparseableMessage("bug")).render().startswith("554 5.6.0")


def test_reply_text_never_carries_line_breaks():
    assert Reply(451, "4.3.0", "a\r\nRCPT TO:<x>").render("id") == "451 4.3.0 a RCPT TO:<x> [id]"


def test_handle_exception_answers_451_not_aiosmtpds_500():
    handler = GatewayHandler(relay=None, access=None, max_recipients=1, messages=None)
    status = asyncio.run(handler.handle_exception(ValueError("boom /etc/shadow")))
    assert status.startswith("451 4.3.0") and "boom" not in status


def _disk_full_inside_sqlite() -> sqlite3.OperationalError:
    """SQLite's own "database or disk is full", made real with a one-page database."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute("PRAGMA max_page_count = 2")
        db.execute("CREATE TABLE t (x BLOB)")
        with pytest.raises(sqlite3.OperationalError) as raised:
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    return raised.value


def _database_locked(tmp_path) -> sqlite3.OperationalError:
    """A real "database is locked": another connection holds the write lock."""
    path = tmp_path / "locked.sqlite"
    with closing(sqlite3.connect(path)) as holder, closing(sqlite3.connect(path, timeout=0)) as waiter:
        holder.execute("CREATE TABLE t (x)")
        holder.commit()
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError) as raised:
            waiter.execute("INSERT INTO t VALUES (1)")
        holder.rollback()
    assert "locked" in str(raised.value)
    return raised.value


def _raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException:  # noqa: BLE001 - re-raised at once, chained
            raise outer  # implicit chaining: __context__, as a careless `except` would leave it
    except Exception as chained:  # noqa: BLE001 - the test wants the chained error itself
        return chained


def test_disk_full_is_452_4_3_1_bare_wrapped_or_from_sqlite():
    enospc = OSError(errno.ENOSPC, "No space left on device")
    for error in (
        enospc,
        _raised_from(StorageError("cannot store blob"), enospc),
        _raised_from(RuntimeError("worker died"), OSError(errno.EDQUOT, "Disk quota exceeded")),
        _disk_full_inside_sqlite(),
        _raised_from(MetadataError("cannot record transfer"), _disk_full_inside_sqlite()),
    ):
        assert reply_for_exception(error).render().startswith("452 4.3.1"), repr(error)


def test_locked_database_is_451_storage_problem(tmp_path):
    locked = _database_locked(tmp_path)
    for error in (locked, _raised_from(RuntimeError("in a thread"), locked)):
        reply = reply_for_exception(error)
        assert reply == STORAGE_UNAVAILABLE and reply.render().startswith("451 4.3.0")
        assert "locked" not in reply.render()


def test_unreadable_master_key_file_is_451_not_permanent(tmp_path):
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "master.key"))
    assert reply_for_exception(denied) == STORAGE_UNAVAILABLE
    not_a_key_file = tmp_path  # a directory where the key file should be
    with pytest.raises(MasterKeyError) as raised:
        load_or_create_master_key(not_a_key_file, None)
    reply = reply_for_exception(raised.value)
    assert reply == STORAGE_UNAVAILABLE and str(tmp_path) not in reply.render()


def test_other_os_errors_stay_generic_451():
    reply = reply_for_exception(OSError(errno.EIO, "Input/output error"))
    assert reply == INTERNAL_ERROR and reply.temporary


def test_a_cycle_in_the_cause_chain_does_not_hang():
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert reply_for_exception(first) == INTERNAL_ERROR


# -- the promise in a real SMTP session: unexpected trouble is 451 4.3.0, details only in the log --

SECRET = "secret-detail /srv/ppap/data/keys/master.key"


class ExplodingNextHop:
    """A next hop with a bug: deliver() raises an error whose text must never reach the client."""

    async def deliver(self, message):
        raise RuntimeError(SECRET)

    async def check(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "exploding test hop"


class ExplodingRelay:
    async def handle(self, envelope, raw):
        raise RuntimeError(SECRET)


def _assert_generic_451(code: int, text: str, log_text: str) -> None:
    assert code == 451 and text.startswith("4.3.0 "), (code, text)
    assert re.search(r"\[[0-9a-f]{12}\]$", text), "the transaction id lets an admin find the log line"
    assert "secret" not in text and "RuntimeError" not in text
    assert "Traceback" in log_text and SECRET in log_text


def test_a_bug_in_delivery_during_a_real_session_is_451_4_3_0_and_logged(tmp_path, caplog):
    mail = corpus_mail("13_no_attachment")
    running = RunningGateway(make_config(tmp_path, "smtp://127.0.0.1:9"))
    running.gateway = Gateway(running.gateway.config, clock=running.clock, next_hop=ExplodingNextHop())
    with caplog.at_level(logging.ERROR), running:
        code, text = send_corpus(running.port, mail)
    _assert_generic_451(code, text, caplog.text)


def test_an_error_escaping_the_handler_is_451_4_3_0_not_aiosmtpds_500(caplog):
    handler = GatewayHandler(
        ExplodingRelay(), RelayAccess([ipaddress.ip_network("127.0.0.0/8")]), 10, MessageLogger()
    )

    async def session() -> tuple[int, str]:
        server = await start_smtp_server(handler, SmtpSettings(listen_port=0), "gw.test")
        try:
            port = server.sockets[0].getsockname()[1]
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
            async with client:
                await client.sendmail("a@city.example.lg.jp", ["b@partner.example.com"], b"\r\nx\r\n")
        except aiosmtplib.SMTPResponseException as refused:
            return refused.code, refused.message
        finally:
            server.close()
            await server.wait_closed()
        return 250, "accepted"

    with caplog.at_level(logging.ERROR):
        code, text = asyncio.run(session())
    _assert_generic_451(code, text, caplog.text)
