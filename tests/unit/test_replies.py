"""The one failure → reply table: our trouble is temporary, and no exception text leaks
(checked on the table; in real SMTP sessions: tests/e2e/test_replies_session.py)."""

import asyncio
import errno
import sqlite3
from contextlib import closing

import pytest

from gateway.errors import RewriteError, UnparseableMessage
from gateway.replies import (
    INTERNAL_ERROR,
    STORAGE_UNAVAILABLE,
    Reply,
    reply_for_exception,
)
from gateway.smtp.handler import GatewayHandler
from gateway.store.blobs import StorageError
from gateway.store.db import MetadataError
from gateway.store.keys import MasterKeyError, load_or_create_master_key


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
