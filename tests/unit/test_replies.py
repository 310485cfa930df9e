"""The one failure → reply table: our trouble is temporary, and no exception text leaks."""

import asyncio
import errno

from gateway.pipeline.parse import UnparseableMessage
from gateway.pipeline.rewrite import RewriteError
from gateway.replies import Reply, reply_for_exception
from gateway.smtp.handler import GatewayHandler
from gateway.store.blobs import StorageError
from gateway.store.db import MetadataError
from gateway.store.keys import MasterKeyError


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
