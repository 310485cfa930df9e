"""The conversion stages: store the files, write each outside recipient's copy, sign it, and
look into it once more before it may leave.

Store keeps the files encrypted (blobs fsync'd, then one metadata commit with every link
pending) and leaves a rollback: if anything fails before a copy reaches the next hop, the
links must not stay. Rewrite takes the converted parts out and puts the notice with the
recipient's own link in; Sign adds DKIM, the last change to the bytes; Verify classifies each
rewritten copy again (what we inspect is what we send).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from collections.abc import Callable
from datetime import datetime

from gateway.config import Config
from gateway.errors import RewriteError
from gateway.filenames import header_value
from gateway.mime import parse_message
from gateway.model import Action, IssuedLink, OutgoingMessage
from gateway.outbound.dkim import DkimSigner
from gateway.pipeline.classify import parse_and_classify
from gateway.pipeline.notice import Notice, NoticeFile, render_notice
from gateway.pipeline.policy import needs_password
from gateway.pipeline.rewrite import rewrite_parsed
from gateway.pipeline.store_step import MessageFacts, TransferWriter
from gateway.pipeline.transaction import Transaction

log = logging.getLogger("gateway.relay")


class Store:
    name = "store"

    def __init__(self, writer: TransferWriter, clock: Callable[[], datetime]):
        self._writer = writer
        self._clock = clock

    async def process(self, tx: Transaction) -> None:
        if not tx.decision.converting:
            return
        facts = MessageFacts(tx.fingerprint, header_value(tx.message, "Message-ID"),
                             header_value(tx.message, "Subject"))
        transfer = await self._writer.store(tx.envelope, tx.decision, facts, self._clock())
        tx.transfer = transfer

        async def discard() -> None:  # nothing left the gateway: the links must not stay
            await self._writer.discard(transfer)

        tx.rollbacks.append(discard)
        outcome = tx.outcome
        outcome.transfer_id = transfer.transfer_id
        outcome.converted_files = len(transfer.files)
        if not transfer.reused:
            outcome.bytes_stored = sum(f.size for f in transfer.files)


class Rewrite:
    """The original for the recipients who get it as it came; for each outside recipient of a
    converted message, a copy without the converted parts and with the notice and their link."""

    name = "rewrite"

    def __init__(self, config: Config, templates):
        self._public_url = config.portal.public_url
        self._zone = config.gateway.timezone
        self._templates = templates

    async def process(self, tx: Transaction) -> None:
        envelope, decision, transfer = tx.envelope, tx.decision, tx.transfer

        def outgoing(rcpts: tuple[str, ...], data: bytes, link_id: str | None = None):
            # the original was made CRLF by the first stage, each copy by the rewriter
            return OutgoingMessage(envelope.mail_from, rcpts, data, link_id, envelope.smtputf8,
                                   envelope.body_8bit, crlf_only=True)

        passing = tuple(r.address for r in decision.recipients if r.action is Action.PASS)
        tx.outgoing = [outgoing(passing, tx.raw)] if passing else []
        if transfer is None:
            return
        for index, link in enumerate(transfer.links):
            # The tree parsed for classification serves the last copy; the others parse anew.
            last = index == len(transfer.links) - 1
            data = await asyncio.to_thread(self._copy_for, tx, link, tx.message if last else None)
            tx.outgoing.append(outgoing((link.recipient,), data, link.link_id))

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
        root = tree if tree is not None else parse_message(tx.raw)
        return rewrite_parsed(root, [a.path for a in decision.to_convert], text, html)


class Sign:
    """DKIM for each rewritten copy; the original passes as it came."""

    name = "sign"

    def __init__(self, signer: DkimSigner):
        self._signer = signer

    async def process(self, tx: Transaction) -> None:
        for index, message in enumerate(tx.outgoing):
            if message.link_id is not None:
                signed = await asyncio.to_thread(self._signer.sign, message.data)
                tx.outgoing[index] = replace(message, data=signed)  # the signer writes CRLF


class Verify:
    """Each rewritten copy is classified again before it leaves and must hold nothing that
    needs converting: anything found means the rewrite could not separate a file from the
    message. (The parts a copy keeps were looked into already: the inspector remembers them.)"""

    name = "verify"

    async def process(self, tx: Transaction) -> None:
        if tx.inspector is not None and tx.transfer is not None:
            await asyncio.to_thread(verify_converted, tx)


def verify_converted(tx: Transaction) -> None:
    for message in tx.outgoing:
        if message.link_id is None:
            continue  # the original, as classified, for recipients inside
        _, again = parse_and_classify(message.data, tx.limits, tx.inspector)
        left = [a.content.reason if a.content and not a.content.clean else a.filename
                for a in again.attachments if needs_password(a)] + list(again.uninspectable)
        if left:
            log.error("a converted copy still holds: %s", left[0])
            raise RewriteError(f"a converted copy still holds {left[0]}")
