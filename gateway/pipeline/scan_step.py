"""Scan the attachments the gateway is about to store, before it stores them.

Only what clamd can read is scanned: an encrypted ZIP (or 7z, Office file, PDF) is opaque until
its password arrives, and its contents are scanned then (gateway.unlock.opening). An infected
file refuses the whole message with a 5xx that names the signature: nothing is stored, nothing
is relayed, and the sender's MTA tells the sender why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.config import Config
from gateway.errors import PermFail, TempFail
from gateway.filenames import header_value
from gateway.model import Attachment, Decision, ZipVerdict
from gateway.pipeline.transaction import Transaction
from gateway.replies import SCAN_UNAVAILABLE, Reply
from gateway.scan.clamd import ClamdScanner, ScanError, ScanUnavailable
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore

log = logging.getLogger("gateway.scan")


@dataclass(frozen=True)
class Infection:
    position: int  # 1-based, among the attachments to store
    filename: str
    signature: str

    def reply(self) -> Reply:
        # Reply text stays ASCII: a Japanese name would reach the bounce as mojibake.
        name = self.filename if self.filename.isascii() and self.filename.isprintable() else ""
        shown = f' "{name[:80]}"' if name else ""
        return Reply(554, "5.7.1",
                     f"Virus found in attachment {self.position}{shown}: {self.signature[:100]}")


def scannable(attachment: Attachment) -> bool:
    if attachment.zip.verdict is ZipVerdict.ENCRYPTED_ZIP:
        return False
    return attachment.container is None or not attachment.container.encrypted


async def find_infection(scanner: ClamdScanner, decision: Decision) -> Infection | None:
    """The first infected attachment among those to store; raises ScanUnavailable/ScanError
    when clamd cannot answer (the caller applies the policy's on_scan_error)."""
    for position, attachment in enumerate(decision.to_convert, start=1):
        if not scannable(attachment):
            continue
        verdict = await scanner.scan(attachment.data)
        if not verdict.clean:
            return Infection(position, attachment.filename, verdict.signature or "unknown")
    return None


class ScanStored:
    """The scan stage: what the message would store goes to clamd first. Infected: 554 naming
    the signature, an audit event, one note to the admin however often the sending MTA
    retries. Unreachable: 451, or stored unscanned where the policy allows it."""

    name = "scan"

    def __init__(self, scanner: ClamdScanner | None, db: Database, config: Config,
                 clock: Callable[[], datetime], wake_notices: Callable[[], None]):
        self._scanner = scanner
        self._db = db
        self._admin = config.scan.admin_address
        self._clock = clock
        self._wake_notices = wake_notices

    async def process(self, tx: Transaction) -> None:
        decision = tx.decision
        if self._scanner is None or not decision.converting:
            return
        try:
            infection = await find_infection(self._scanner, decision)
        except (ScanUnavailable, ScanError) as error:
            if decision.policy.on_scan_error == "tempfail":
                raise TempFail(SCAN_UNAVAILABLE, "scan-unavailable",
                               f"scan unavailable: {error}") from error
            log.warning("scan unavailable, storing unscanned (on_scan_error=allow): %s", error)
            tx.outcome.notes.append("stored unscanned")
            return
        if infection is not None:
            await asyncio.to_thread(self._record_infection, tx, infection)
            self._wake_notices()
            raise PermFail(infection.reply(), "virus", f"virus {infection.signature}")

    def _record_infection(self, tx: Transaction, infection: Infection) -> None:
        envelope, now = tx.envelope, self._clock()
        facts = {"sender": envelope.mail_from or "<>", "file": infection.filename,
                 "signature": infection.signature, "recipients": len(envelope.rcpt_tos)}
        with self._db.transaction():
            self._db.append_event("scan.infected", now, detail=facts)
            if self._admin:  # once per message, however often the sending MTA retries
                OutboxStore(self._db).enqueue(
                    kind="virus-refused", now=now, due_at=now,
                    dedupe_key=f"virus-refused:{tx.fingerprint}",
                    payload={**facts, "address": self._admin, "locale": tx.decision.policy.locale,
                             "subject": header_value(tx.message, "Subject"),
                             "message_id": header_value(tx.message, "Message-ID")},
                )
