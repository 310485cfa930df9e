"""The delivery stages: each copy to the next hop, its answer recorded before the next copy
goes, then the one answer for the client.

Record commits what the next hop said in one transaction: the recipients served (so that a
retry of the same message reaches only the rest), the link made active with its notices
queued (and the links earlier, crashed attempts left pending for the same recipient: their
copies may have arrived), or the link failed. A link whose transfer the purge took meanwhile
is never made active: its copy is answered 4xx, and the retry makes a fresh transfer.

Answer mirrors the next hop: any temporary refusal is our 4xx; permanent refusals our 5xx
naming the recipients when nobody got the message, else 250 with the refused recipients
reported to the sender (pipeline/dsn_step.py), as an MTA does once it has taken a message;
everything accepted is 250. A transfer none of whose links was delivered loses its files at
once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import datetime

from gateway.crashpoints import crash_point
from gateway.errors import TempFail
from gateway.model import DeliveryResult
from gateway.outbound.hop import NextHop
from gateway.pipeline.dsn_step import FailureReports, Refused
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.store_step import TransferWriter
from gateway.pipeline.transaction import Delivery, Transaction
from gateway.replies import FILES_PURGED, OK, Reply
from gateway.store.db import Database

log = logging.getLogger("gateway.relay")


class _FilesGone(Exception):
    """A delivered copy's link cannot become active: the purge took its transfer."""

_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\s+(.*)$", re.S)


class Deliver:
    name = "deliver"

    def __init__(self, next_hop: NextHop):
        self._next_hop = next_hop

    async def process(self, tx: Transaction) -> None:
        tx.rollbacks.clear()  # from here on a copy may have left: Answer decides what stays
        planned = tx.planned
        if tx.copy_refused is not None:
            result = tx.copy_refused  # it could not be made safe: it does not go
        else:
            result = await self._next_hop.deliver(tx.copy)
        tx.deliveries.append(Delivery(planned.rcpt_tos, planned.link_id, result))


class Record:
    name = "record"

    def __init__(self, db: Database, notices: NoticeQueue | None,
                 clock: Callable[[], datetime], wake_notices: Callable[[], None]):
        self._db = db
        self._notices = notices
        self._clock = clock
        self._wake_notices = wake_notices

    async def process(self, tx: Transaction) -> None:
        message = tx.deliveries[-1]  # the copy just sent: its recipients, link and answer
        result = message.result
        try:
            due_now = await asyncio.to_thread(self._record, tx, message, result)
        except _FilesGone:
            # The purge took the transfer while its copy was on its way: that copy carries a
            # dead link. Nothing is recorded as served, so the retry reaches its recipients
            # with a fresh transfer.
            log.warning("link %s delivered after its files were purged", message.link_id)
            await asyncio.to_thread(self._record_dead_link, tx, message)
            raise TempFail(FILES_PURGED, "deferred", "files purged during delivery") from None
        except Exception as error:
            if not result.accepted or message.link_id is not None:
                raise  # a link left pending must not look delivered: 4xx, the retry mends
            # The next hop has this unchanged copy: a 4xx now would make the retry send it
            # again, so it counts as delivered though the store could not say so.
            log.error("delivered but not recorded (%s): %s", type(error).__name__, error)
            tx.outcome.notes.append("delivery not recorded")
            due_now = False
        if due_now:
            self._wake_notices()
        if result.accepted and message.link_id:
            tx.outcome.links_created += 1

    def _record(self, tx: Transaction, message: Delivery, result: DeliveryResult) -> bool:
        """Commit what the next hop's answer means; True when a notice is due at once."""
        now = self._clock()
        transfer = tx.transfer
        transfer_id = transfer.transfer_id if transfer else None
        due_now = False
        with self._db.transaction():
            if result.accepted:
                # First, so that a link that cannot be activated leaves nothing recorded.
                if message.link_id and not self._db.activate_link(message.link_id, now):
                    raise _FilesGone(message.link_id)
                for rcpt in message.rcpt_tos:
                    if rcpt not in result.rejected_recipients:
                        self._db.record_delivery(
                            tx.fingerprint, rcpt, now, transfer_id=transfer_id,
                            link_id=message.link_id,
                        )
                if message.link_id:
                    self._db.append_event(
                        "link.delivered", now, transfer_id=transfer_id,
                        link_id=message.link_id, recipient=message.rcpt_tos[0],
                    )
                    # An attempt that died after the next hop's 250 left its copy with the
                    # recipient and its link pending: that link must open too.
                    for earlier in self._db.activate_earlier_links(message.link_id, now):
                        self._db.append_event(
                            "link.activated_with_retry", now, transfer_id=transfer_id,
                            link_id=earlier, recipient=message.rcpt_tos[0],
                            detail={"retry_link": message.link_id},
                        )
                    if self._notices is not None:
                        due_now = self._notices.link_delivered(
                            transfer, message.link_id, tx.decision.policy, now
                        )
            elif message.link_id:
                self._db.fail_links([message.link_id])
                self._db.append_event(
                    "link.delivery_failed", now, transfer_id=transfer_id, link_id=message.link_id,
                    recipient=message.rcpt_tos[0], detail={"code": result.code},
                )
        return due_now

    def _record_dead_link(self, tx: Transaction, message: Delivery) -> None:
        now = self._clock()
        transfer_id = tx.transfer.transfer_id if tx.transfer else None
        with self._db.transaction():
            self._db.fail_links([message.link_id])
            self._db.append_event(
                "link.files_purged", now, transfer_id=transfer_id, link_id=message.link_id,
                recipient=message.rcpt_tos[0],
            )


class Answer:
    name = "answer"

    def __init__(self, writer: TransferWriter, db: Database, reports: FailureReports):
        self._writer = writer
        self._db = db
        self._reports = reports

    async def process(self, tx: Transaction) -> None:
        if tx.transfer is not None:
            links = await asyncio.to_thread(self._db.links_of, tx.transfer.transfer_id)
            if not any(link.state == "active" for link in links):
                await self._writer.discard(tx.transfer)
        reply = answer_for(tx)
        if reply.code >= 500 and await asyncio.to_thread(self._anyone_served, tx):
            # The others have the message: a 5xx would have the sending MTA bounce it for
            # them too. So 250, and the refused recipients are reported to the sender by us.
            reply = await self._reports.report(tx, refused_for_good(tx))
        tx.outcome.reply = reply
        crash_point("relay.recorded")

    def _anyone_served(self, tx: Transaction) -> bool:
        """Whether a recipient of this message got it, now or in an earlier attempt."""
        return any(delivery.result.accepted for delivery in tx.deliveries) \
            or bool(self._db.delivered_recipients(tx.fingerprint))


def answer_for(tx: Transaction) -> Reply:
    temporary: Reply | None = None
    permanent: Reply | None = None
    refused: list[str] = []
    for delivery in tx.deliveries:
        result = delivery.result
        if not result.accepted:
            reply = reply_from_result(result)
            if result.temporary:
                temporary = temporary or reply
            else:
                permanent = permanent or reply
                refused.extend(delivery.rcpt_tos)
            continue
        for rcpt, (code, text) in result.rejected_recipients.items():
            reply = reply_from_result(DeliveryResult(False, code, text))
            if 400 <= code < 500:
                temporary = temporary or reply
            else:
                permanent = permanent or reply
                refused.append(rcpt)
    if temporary:
        return temporary
    if permanent:
        names = ", ".join(refused[:5])
        return Reply(permanent.code, permanent.enhanced, f"{permanent.text} ({names})")
    return OK


def refused_for_good(tx: Transaction) -> list[Refused]:
    """Every recipient a copy was permanently refused for, with the next hop's reply to it."""
    refused: list[Refused] = []
    for delivery in tx.deliveries:
        result = delivery.result
        if result.accepted:
            replies = {r: reply for r, reply in result.rejected_recipients.items() if reply[0] >= 500}
        elif result.permanent:
            replies = {r: result.rejected_recipients.get(r, (result.code, result.message))
                       for r in delivery.rcpt_tos}
        else:
            continue
        for recipient, (code, text) in replies.items():
            status = reply_from_result(DeliveryResult(False, code, text)).enhanced
            # Action: failed needs a 5.x.x status, whatever a confused next hop wrote
            refused.append(Refused(recipient, code, status if status[0] == "5" else "5.0.0", text))
    return refused


def reply_from_result(result: DeliveryResult) -> Reply:
    """The next hop's answer as ours: its enhanced code and text, its code class."""
    match = _ENHANCED.match(result.message or "")
    if match:
        enhanced, text = match.group(1), match.group(2)
    else:
        enhanced = "4.4.0" if result.code < 500 else "5.0.0"
        text = result.message or "next hop refused the message"
    code = result.code if 400 <= result.code < 600 else 451
    return Reply(code, enhanced, f"next hop: {text}")
