"""The one table that maps our failures to SMTP replies. Anything unknown is temporary.

As in Postfix's cleanup_strerror: trouble of ours must never become a permanent refusal,
and no exception text ever reaches the client; the transaction id lets an admin find the
log line.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from gateway.containers.base import InspectionLimit, InspectionTimedOut
from gateway.errors import (
    HeaderLimitExceeded,
    RewriteError,
    StructureLimitExceeded,
    UnparseableMessage,
)
from gateway.store.blobs import StorageError
from gateway.store.db import MetadataError
from gateway.store.engines import is_disk_full as is_database_full
from gateway.store.engines import is_engine_error
from gateway.store.keys import MasterKeyError


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def render(self, txid: str | None = None) -> str:
        suffix = f" [{txid}]" if txid else ""
        # Replies go onto one protocol line: never let CR/LF through.
        text = " ".join(self.text.split())
        return f"{self.code} {self.enhanced} {text}{suffix}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


OK = Reply(250, "2.0.0", "Ok: delivered")
ALREADY_DELIVERED = Reply(250, "2.0.0", "Ok: already delivered to every recipient")
# Some copies taken, the rest refused for good by the next hop (see pipeline/dsn_step.py).
PARTLY_DELIVERED = Reply(250, "2.0.0", "Ok: delivered; refused recipients reported to the sender")
PARTLY_DELIVERED_UNREPORTED = Reply(250, "2.0.0", "Ok: delivered; refused recipients logged")
INTERNAL_ERROR = Reply(451, "4.3.0", "Temporary local problem, try again later")
STORAGE_UNAVAILABLE = Reply(451, "4.3.0", "Temporary storage problem, try again later")
DISK_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
CANNOT_CONVERT = Reply(554, "5.6.0", "Message structure too complex to convert safely")
SCAN_UNAVAILABLE = Reply(451, "4.7.0", "Virus scanner unavailable, try again later")
CANNOT_PARSE = Reply(554, "5.6.0", "Malformed MIME structure, message cannot be checked")
NUL_DOT_LINE = Reply(554, "5.6.0", "A line of a dot and NUL characters is refused (SMTP smuggling)")
MIME_OVER_LIMITS = Reply(554, "5.6.0", "MIME structure exceeds limits")
HEADER_OVER_LIMITS = Reply(552, "5.3.4", "Message header exceeds limits")
DATA_IN_FLIGHT_FULL = Reply(451, "4.3.2", "Too much mail in transit, try again later")
NUL_IN_MESSAGE = Reply(554, "5.6.0", "NUL characters are not allowed in mail (RFC 5322)")
CANNOT_INSPECT = Reply(554, "5.6.0", "Message cannot be inspected")
INSPECTION_TIMED_OUT = Reply(451, "4.3.0", "Content inspection did not finish, try again later")
FILES_PURGED = Reply(451, "4.3.0", "Stored files were removed during delivery, try again later")
STILL_RELAYING = Reply(451, "4.3.0", "The same message is still being relayed, try again later")


def _causes(error: BaseException) -> list[BaseException]:
    """The error and everything it was raised from or during, each once (cycles happen)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    # SQLite and PostgreSQL say "disk full" with codes of their own, not an errno.
    return is_database_full(error)


def _is_storage_trouble(error: BaseException) -> bool:
    """Our disk, database or key cannot be used right now (locked, unreadable, gone)."""
    return (isinstance(error, (StorageError, MetadataError, MasterKeyError, PermissionError))
            or is_engine_error(error))


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def reply_for_exception(error: BaseException) -> Reply:
    """Most specific first; the default is 451 4.3.0.

    The whole cause chain counts: a disk-full OSError wrapped in a StorageError is still a full disk.
    """
    if isinstance(error, RewriteError):
        return CANNOT_CONVERT
    if isinstance(error, InspectionLimit):
        return Reply(CANNOT_INSPECT.code, CANNOT_INSPECT.enhanced,
                     f"{CANNOT_INSPECT.text}: {_ascii(error.reason)}")
    if isinstance(error, InspectionTimedOut):
        return INSPECTION_TIMED_OUT
    if isinstance(error, StructureLimitExceeded):
        limit = HEADER_OVER_LIMITS if isinstance(error, HeaderLimitExceeded) else MIME_OVER_LIMITS
        return Reply(limit.code, limit.enhanced, f"{limit.text}: {_ascii(error.reason)}")
    if isinstance(error, UnparseableMessage):
        return CANNOT_PARSE
    causes = _causes(error)
    if any(_is_disk_full(cause) for cause in causes):
        return DISK_FULL
    if any(_is_storage_trouble(cause) for cause in causes):
        return STORAGE_UNAVAILABLE
    return INTERNAL_ERROR
