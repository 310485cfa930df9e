"""The first two stages: one reading of the bytes, and only the recipients not yet served.

FrameBytes refuses NUL (readers disagree about it; a dot-and-NUL line is SMTP smuggling) and makes
every line end CRLF before anything reads the message, so the classified bytes are the
delivered bytes. SkipServed fingerprints envelope and content, and narrows the envelope to the
recipients an earlier attempt of the same message did not reach. An attempt that arrives while
an earlier one of the same message is still being relayed (its client left before our answer,
and came back at once) is deferred: the two would serve the same recipients. On one machine the
workers' ledger tells (RelayingNow's interface); on a cluster, AcrossNodes adds a claim in the
shared database, asked in the same thread hop that reads the recipients served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from gateway.errors import PermFail, Stop, TempFail
from gateway.model import Envelope
from gateway.pipeline.transaction import Transaction
from gateway.replies import ALREADY_DELIVERED, NUL_DOT_LINE, NUL_IN_MESSAGE, STILL_RELAYING
from gateway.store.db import Database
from gateway.store.relaying import RelayClaims
from gateway.wire import crlf_line_endings

log = logging.getLogger("gateway.relay")

# A next hop that drops NUL before looking for the end of data would read such a line as
# CRLF.CRLF and take what follows as new commands (SMTP smuggling). No real client sends one.
_NUL_DOT_LINE = re.compile(rb"(?:\A|[\r\n])(?:\x00+\.\x00*|\.\x00+)(?=[\r\n]|\Z)")
# How long a node's claim on a message it relays holds: longer than a client waits for our
# answer after its data (RFC 5321: 10 minutes), so a retry comes only from one that gave up;
# a dead node's claims end with it, and its messages' retries are relayed elsewhere.
RELAY_CLAIM_LEASE = timedelta(minutes=15)


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


class AcrossNodes:
    """RelayingNow's interface for the machine (`local`: RelayingNow, or the ledger of `serve`)
    and, with claim_shared, a claim row in the database the nodes share (store/relaying.py),
    taken once the machine has none and let go when the relay ends, in a worker thread."""

    def __init__(self, local: RelayingNow, claims: RelayClaims, node: str,
                 clock: Callable[[], datetime], lease: timedelta = RELAY_CLAIM_LEASE):
        self._local, self._claims, self._node = local, claims, node
        self._clock, self._lease = clock, lease
        self._held: dict[str, datetime] = {}  # fingerprint → the expiry of our claim
        self._held_lock = threading.Lock()  # claim_shared runs in worker threads
        self._releasing: set[asyncio.Future] = set()

    def claim(self, fingerprint: str) -> bool:
        """This machine's check (no worker of it relays the message)."""
        return self._local.claim(fingerprint)

    def claim_shared(self, fingerprint: str) -> bool:
        """Blocking: False when another node relays the message now."""
        now = self._clock()
        expires_at = now + self._lease
        if not self._claims.claim(fingerprint, self._node, now, expires_at):
            return False
        with self._held_lock:
            self._held[fingerprint] = expires_at
        return True

    def release(self, fingerprint: str) -> None:
        """Called on the event loop when the relay ends: the machine's claim at once, the
        database's in a worker thread (should it never run, its lease ends it)."""
        self._local.release(fingerprint)
        with self._held_lock:
            expires_at = self._held.pop(fingerprint, None)
        if expires_at is None:
            return
        releasing = asyncio.get_running_loop().run_in_executor(
            None, self._claims.release, fingerprint, self._node, expires_at)
        self._releasing.add(releasing)
        releasing.add_done_callback(self._released)

    def _released(self, releasing: asyncio.Future) -> None:
        self._releasing.discard(releasing)
        if not releasing.cancelled() and releasing.exception() is not None:
            log.warning("cannot release a relay claim (its lease will end it): %s",
                        releasing.exception())

    async def settled(self) -> None:
        """Wait for the releases under way (before the store closes)."""
        await asyncio.gather(*self._releasing, return_exceptions=True)


class SkipServed:
    name = "served"

    def __init__(self, db: Database, relaying: RelayingNow | AcrossNodes | None = None):
        self._db = db
        self._relaying = relaying or RelayingNow()

    async def process(self, tx: Transaction) -> None:
        tx.fingerprint = fingerprint = message_fingerprint(tx.envelope, tx.raw)
        if not self._relaying.claim(fingerprint):
            raise TempFail(STILL_RELAYING, "deferred", "same message still relaying")
        tx.releases.append(lambda: self._relaying.release(fingerprint))
        served = await asyncio.to_thread(self._served, fingerprint)
        if served is None:
            raise TempFail(STILL_RELAYING, "deferred", "same message relaying on another node")
        remaining = tuple(r for r in tx.envelope.rcpt_tos if r not in served)
        if not remaining:
            raise Stop(ALREADY_DELIVERED, "duplicate")
        tx.envelope = replace(tx.envelope, rcpt_tos=remaining)

    def _served(self, fingerprint: str) -> set[str] | None:
        """The recipients an earlier attempt served; None when another node relays it now."""
        relaying = self._relaying
        if isinstance(relaying, AcrossNodes) and not relaying.claim_shared(fingerprint):
            return None
        return self._db.delivered_recipients(fingerprint)
