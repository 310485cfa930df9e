"""The conversion stages: store the files, plan the copies, then, one copy at a time, write an
outside recipient's copy, sign it, and look into it once more before it may leave.

Store keeps the files encrypted (blobs fsync'd, then one metadata commit with every link
pending) and leaves a rollback: if anything fails before a copy reaches the next hop, the
links must not stay. PlanCopies lists what goes out without making it. Per copy, Rewrite takes
the converted parts out and puts the notice with the recipient's own link in; Sign adds DKIM,
the last change to the bytes; Verify classifies the rewritten copy again (what we inspect is
what we send). The copy is delivered and recorded (delivery.py) and let go before the next is
made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from copy import deepcopy
from dataclasses import replace
from datetime import datetime

from gateway.config import Config
from gateway.errors import RewriteError
from gateway.filenames import header_value
from gateway.model import Action, DeliveryResult, IssuedLink, OutgoingMessage
from gateway.outbound.dkim import DkimSigner
from gateway.pipeline.classify import parse_and_classify
from gateway.pipeline.notice import Notice, NoticeFile, render_notice
from gateway.pipeline.policy import needs_password
from gateway.pipeline.rewrite import rewrite_parsed
from gateway.pipeline.store_step import MessageFacts, TransferWriter
from gateway.pipeline.transaction import PlannedCopy, Transaction

log = logging.getLogger("gateway.relay")


class Store:
    name = "store"

    def __init__(self, writer: TransferWriter, clock: Callable[[], datetime]):
        self._writer = writer
        self._clock = clock

    async def process(self, tx: Transaction) -> None:
        if not tx.decision.converting:
            tx.let_go_of_decoded_files()
            return
        facts = MessageFacts(tx.fingerprint, header_value(tx.message, "Message-ID"),
                             header_value(tx.message, "Subject"))
        transfer = await self._writer.store(tx.envelope, tx.decision, facts, self._clock())
        tx.transfer = transfer

        async def discard() -> None:  # nothing left the gateway: the links must not stay
            await self._writer.discard(transfer)

        tx.rollbacks.append(discard)
        tx.let_go_of_decoded_files()
        outcome = tx.outcome
        outcome.transfer_id = transfer.transfer_id
        outcome.converted_files = len(transfer.files)
        if not transfer.reused:
            outcome.bytes_stored = sum(f.size for f in transfer.files)


class PlanCopies:
    """What goes out, without making any of it yet: the original for the recipients who get it
    as it came, then one copy per outside recipient of a converted message, with their link.
    Each copy is made, signed, looked into and sent in its turn (the per-copy stages), so a
    message costs one copy at a time, not one per recipient."""

    name = "copies"

    async def process(self, tx: Transaction) -> None:
        passing = tuple(r.address for r in tx.decision.recipients if r.action is Action.PASS)
        tx.copies = [PlannedCopy(passing)] if passing else []
        if tx.transfer is not None:
            tx.copies += [PlannedCopy((link.recipient,), link) for link in tx.transfer.links]


class Rewrite:
    """The original as it came; or an outside recipient's copy, without the converted parts and
    with the notice and their link."""

    name = "rewrite"

    def __init__(self, config: Config, templates):
        self._public_url = config.portal.public_url
        self._zone = config.gateway.timezone
        self._templates = templates

    async def process(self, tx: Transaction) -> None:
        planned, envelope = tx.planned, tx.envelope
        if planned.link is None:
            data = tx.raw  # made CRLF by the first stage
        else:
            # The tree parsed for classification serves the last copy; the others rewrite a
            # copy of it (the rewriter changes the tree it is given; a deep copy shares the
            # bodies, which are immutable strings, and costs far less than parsing again).
            last = planned is tx.copies[-1]
            try:
                data = await asyncio.to_thread(
                    self._copy_for, tx, planned.link, tx.message if last else None)
            except RewriteError as error:
                refuse_copy_or_raise(tx, error)
                return
        # each copy is made CRLF by the rewriter
        tx.copy = OutgoingMessage(envelope.mail_from, planned.rcpt_tos, data, planned.link_id,
                                  envelope.smtputf8, envelope.body_8bit, crlf_only=True)

    def _copy_for(self, tx: Transaction, link: IssuedLink, tree) -> bytes:
        decision, transfer = tx.decision, tx.transfer
        policy = transfer.policy or decision.policy  # a retry's copy speaks as the first did
        notice = Notice(
            locale=policy.locale,
            files=tuple(NoticeFile(f.display_name, f.size) for f in transfer.files),
            url=f"{self._public_url}/d/{link.token}",
            expires_at=transfer.expires_at.astimezone(self._zone),
            password=transfer.password_channel,
            double_zip=any(a.zip.nested_zip_names for a in decision.to_convert),
        )
        text, html = render_notice(self._templates, notice)
        root = tree if tree is not None else deepcopy(tx.message)
        return rewrite_parsed(root, [a.path for a in decision.to_convert], text, html)


class Sign:
    """DKIM for a rewritten copy; the original passes as it came."""

    name = "sign"

    def __init__(self, signer: DkimSigner):
        self._signer = signer

    async def process(self, tx: Transaction) -> None:
        copy = tx.copy
        if copy is not None and copy.link_id is not None:
            signed = await asyncio.to_thread(self._signer.sign, copy.data)
            tx.copy = replace(copy, data=signed)  # the signer writes CRLF


class Verify:
    """A rewritten copy is classified again before it leaves and must hold nothing that needs
    converting: anything found means the rewrite could not separate a file from the message.
    (The parts a copy keeps were looked into already: the inspector remembers them.) Each copy
    is looked at in its turn, against its own deadline, before it goes."""

    name = "verify"

    async def process(self, tx: Transaction) -> None:
        copy = tx.copy
        if tx.inspector is None or copy is None or copy.link_id is None:
            return  # the original, as classified, for recipients inside
        tx.inspector.allow_time()
        try:
            await asyncio.to_thread(verify_converted, tx, copy)
        except RewriteError as error:
            refuse_copy_or_raise(tx, error)


def verify_converted(tx: Transaction, copy: OutgoingMessage) -> None:
    _, again = parse_and_classify(copy.data, tx.limits, tx.inspector)
    left = [a.content.reason if a.content and not a.content.clean else a.filename
            for a in again.attachments if needs_password(a)] + list(again.uninspectable)
    if left:
        log.error("a converted copy still holds: %s", left[0])
        raise RewriteError(f"a converted copy still holds {left[0]}")


def refuse_copy_or_raise(tx: Transaction, error: RewriteError) -> None:
    """A copy that cannot be made safe never goes. Before any copy went to the next hop, the
    whole message is refused (and the stored transfer rolled back); after, the copies that went
    stand, and this one is answered as its recipient's permanent refusal (reported to the
    sender with the others', pipeline/dsn_step.py). Copies differ only by their link, so the
    first outside copy is where this shows; the later ones are checked all the same."""
    if not tx.deliveries:
        raise error
    log.error("copy for %s not sent: %s", tx.planned.rcpt_tos[0], error)
    tx.copy = None
    tx.copy_refused = DeliveryResult(False, 554, f"5.6.0 {error}")
