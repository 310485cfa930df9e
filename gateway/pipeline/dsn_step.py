"""Queue the delivery status notification for recipients the next hop refused for good while
others got the message.

A 5xx to the sending MTA would have it bounce the whole message, to recipients who received it
too; so, as an MTA does once it has taken a message, we answer 250 and report the refused
recipients to the envelope sender ourselves (RFC 3464, composed by gateway.notify.dsn). The
report is queued in the durable outbox in the commit that records the refused recipients as
dealt with, so a crash neither loses it nor, on the sender's retry, doubles it. Nothing is ever
reported to the null sender (RFC 5321 4.5.5): its refusals are only logged.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.addresses import is_null_sender
from gateway.filenames import header_value
from gateway.pipeline.transaction import Transaction
from gateway.replies import PARTLY_DELIVERED, PARTLY_DELIVERED_UNREPORTED, Reply
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore

DSN = "dsn"
# The original's header section travels in the report (text/rfc822-headers), up to this much.
MAX_REPORTED_HEADERS = 32 * 1024


@dataclass(frozen=True)
class Refused:
    """A recipient the next hop refused for good, and its reply: code, RFC 3463 status, text."""

    recipient: str
    code: int
    status: str
    text: str

    @property
    def diagnostic(self) -> str:
        """The next hop's reply as it said it, for Diagnostic-Code: smtp; (RFC 3464 2.3.6)."""
        return f"{self.code} {self.text}"


def header_section(raw: bytes, limit: int = MAX_REPORTED_HEADERS) -> bytes:
    """The message's header lines (CRLF, as the relay made them), whole lines only, at most
    `limit` bytes: what text/rfc822-headers carries (RFC 6522)."""
    end = raw.find(b"\r\n\r\n")
    headers = raw if end < 0 else raw[:end + 2]
    if len(headers) > limit:
        headers = headers[:headers.rfind(b"\r\n", 0, limit) + 2]
    return headers


class FailureReports:
    def __init__(self, db: Database, clock: Callable[[], datetime],
                 wake_notices: Callable[[], None], reporting_mta: str):
        self._db = db
        self._clock = clock
        self._wake_notices = wake_notices
        self._reporting_mta = reporting_mta

    async def report(self, tx: Transaction, refused: list[Refused]) -> Reply:
        """Record the refused recipients as dealt with and queue their report; the 250 to give."""
        to_sender = not is_null_sender(tx.envelope.mail_from)
        await asyncio.to_thread(self._record, tx, refused, to_sender)
        tx.outcome.notes.append(
            f"{len(refused)} refused for good, "
            + ("reported to the sender" if to_sender else "not reported (null sender)")
        )
        if not to_sender:
            return PARTLY_DELIVERED_UNREPORTED
        self._wake_notices()
        return PARTLY_DELIVERED

    def _record(self, tx: Transaction, refused: list[Refused], to_sender: bool) -> None:
        now = self._clock()
        with self._db.transaction():
            # Dealt with: the sender's retry (our 250 lost) neither tries them nor reports again.
            for each in refused:
                self._db.record_delivery(tx.fingerprint, each.recipient, now)
            if to_sender:
                OutboxStore(self._db).enqueue(
                    kind=DSN, now=now, due_at=now, dedupe_key=f"{DSN}:{tx.fingerprint}",
                    payload=self._payload(tx, refused, now),
                )

    def _payload(self, tx: Transaction, refused: list[Refused], now: datetime) -> dict:
        return {
            "sender": tx.envelope.mail_from,
            "locale": tx.decision.policy.locale if tx.decision else "ja",
            "subject": header_value(tx.message, "Subject") if tx.message else "",
            "message_id": header_value(tx.message, "Message-ID") if tx.message else "",
            "reporting_mta": self._reporting_mta,
            "arrival": (tx.received_at or now).isoformat(),
            "recipients": [
                {"address": each.recipient, "status": each.status,
                 "diagnostic": each.diagnostic}
                for each in refused
            ],
            "headers": base64.b64encode(header_section(tx.raw)).decode("ascii"),
        }
