"""The first two stages: one reading of the bytes, and only the recipients not yet served.

FrameBytes refuses NUL (readers disagree about it; a dot-and-NUL line is SMTP smuggling) and makes
every line end CRLF before anything reads the message, so the classified bytes are the
delivered bytes. SkipServed fingerprints envelope and content, and narrows the envelope to the
recipients an earlier attempt of the same message did not reach. An attempt that arrives while
an earlier one of the same message is still being relayed (its client left before our answer,
and came back at once) is deferred: the two would serve the same recipients.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import replace

from gateway.errors import PermFail, Stop, TempFail
from gateway.model import Envelope
from gateway.pipeline.transaction import Transaction
from gateway.replies import ALREADY_DELIVERED, NUL_DOT_LINE, NUL_IN_MESSAGE, STILL_RELAYING
from gateway.store.db import Database
from gateway.wire import crlf_line_endings

# A next hop that drops NUL before looking for the end of data would read such a line as
# CRLF.CRLF and take what follows as new commands (SMTP smuggling). No real client sends one.
_NUL_DOT_LINE = re.compile(rb"(?:\A|[\r\n])(?:\x00+\.\x00*|\.\x00+)(?=[\r\n]|\Z)")


def message_fingerprint(envelope: Envelope, raw: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(envelope.mail_from.lower().encode("utf-8", "surrogateescape") + b"\0")
    for rcpt in sorted(r.lower() for r in envelope.rcpt_tos):
        digest.update(rcpt.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(raw)
    return digest.hexdigest()


class FrameBytes:
    name = "frame"

    async def process(self, tx: Transaction) -> None:
        if b"\x00" in tx.raw:  # readers disagree about NUL (C strings end there): one reading
            raise PermFail(NUL_DOT_LINE if _NUL_DOT_LINE.search(tx.raw) else NUL_IN_MESSAGE,
                           "refused")
        # CR CR LF or a bare LF cannot make us see another message than the next hop gets
        tx.raw = crlf_line_endings(tx.raw)


class RelayingNow:
    """The fingerprints of the messages this process is relaying now (gateway.ledger has the
    one the workers of `serve` share)."""

    def __init__(self) -> None:
        self._fingerprints: set[str] = set()

    def claim(self, fingerprint: str) -> bool:
        if fingerprint in self._fingerprints:
            return False
        self._fingerprints.add(fingerprint)
        return True

    def release(self, fingerprint: str) -> None:
        self._fingerprints.discard(fingerprint)


class SkipServed:
    name = "served"

    def __init__(self, db: Database, relaying: RelayingNow | None = None):
        self._db = db
        self._relaying = relaying or RelayingNow()

    async def process(self, tx: Transaction) -> None:
        tx.fingerprint = fingerprint = message_fingerprint(tx.envelope, tx.raw)
        if not self._relaying.claim(fingerprint):
            raise TempFail(STILL_RELAYING, "deferred", "same message still relaying")
        tx.releases.append(lambda: self._relaying.release(fingerprint))
        served = await asyncio.to_thread(self._db.delivered_recipients, tx.fingerprint)
        remaining = tuple(r for r in tx.envelope.rcpt_tos if r not in served)
        if not remaining:
            raise Stop(ALREADY_DELIVERED, "duplicate")
        tx.envelope = replace(tx.envelope, rcpt_tos=remaining)
