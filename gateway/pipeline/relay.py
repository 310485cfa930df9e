"""Run one received message through the stages and work out the one SMTP answer.

classify → decide → (scan) → store → rewrite → sign → deliver → answer. The answer is `250`
only once the next hop has accepted every resulting message; any trouble of ours or a temporary
refusal downstream is a `4xx`, and the recipients already served are remembered (by a fingerprint of
envelope and content) so that the sender's retry reaches only the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable

from gateway.config import Config, Policy
from gateway.crashpoints import crash_point
from gateway.filenames import header_value
from gateway.model import (
    Action,
    Decision,
    DeliveryResult,
    Envelope,
    OutgoingMessage,
    StoredTransfer,
    ZipVerdict,
)
from gateway.containers.base import InspectionLimit, InspectionTimedOut
from gateway.containers.contents import ContentInspector, InspectionLimits
from gateway.pipeline.classify import content_inspector, parse_and_classify
from gateway.pipeline.deliver import NextHop
from gateway.pipeline.notice import Notice, NoticeFile, render_notice
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.parse import (
    MimeLimits,
    StructureLimitExceeded,
    UnparseableMessage,
    parse_message,
)
from gateway.pipeline.policy import decide, needs_inspection, needs_password
from gateway.pipeline.rewrite import RewriteError, rewrite_parsed
from gateway.pipeline.scan_step import find_infection
from gateway.pipeline.sign import DkimSigner
from gateway.pipeline.store_step import MessageFacts, TransferWriter
from gateway.pipeline.unlock_step import PasswordMailUnlocker, UnlockVerdict
from gateway.replies import (
    ALREADY_DELIVERED,
    NUL_DOT_LINE,
    NUL_IN_MESSAGE,
    OK,
    SCAN_UNAVAILABLE,
    Reply,
    reply_for_exception,
)
from gateway.scan.clamd import ClamdScanner, ScanError, ScanUnavailable
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from gateway.wire import crlf_line_endings

log = logging.getLogger("gateway.relay")

# A next hop that drops NUL before looking for the end of data would read such a line as
# CRLF.CRLF and take what follows as new commands (SMTP smuggling). No real client sends one.
_NUL_DOT_LINE = re.compile(rb"(?:\A|[\r\n])(?:\x00+\.\x00*|\.\x00+)(?=[\r\n]|\Z)")
# What a message's own content brings about: answered with a reason, no traceback logged.
_REFUSALS = (StructureLimitExceeded, UnparseableMessage, InspectionLimit, InspectionTimedOut,
             RewriteError)
_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\s+(.*)$", re.S)


@dataclass
class Outcome:
    """The answer for the client, and what the one log line says about the message."""

    reply: Reply
    decision: str = "error"
    department: str = ""
    transfer_id: str = ""
    internal: int = 0
    external: int = 0
    converted_files: int = 0
    bytes_stored: int = 0  # plaintext bytes newly stored (not counting a retry's reused files)
    links_created: int = 0  # links whose mail the next hop accepted
    notes: list[str] = field(default_factory=list)


def message_fingerprint(envelope: Envelope, raw: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(envelope.mail_from.lower().encode("utf-8", "surrogateescape") + b"\0")
    for rcpt in sorted(r.lower() for r in envelope.rcpt_tos):
        digest.update(rcpt.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(raw)
    return digest.hexdigest()


def _header_text(message, name: str, limit: int = 500) -> str:
    # Stored, then shown on the portal and in notices: decoded, no controls or bidi overrides.
    return " ".join(header_value(message, name).split())[:limit]


def _verify_converted(
    messages: list[OutgoingMessage], limits: MimeLimits, inspector: ContentInspector
) -> None:
    """What we inspect is what we send: each rewritten copy is classified again before it
    leaves, and must hold nothing that needs converting. Anything found means the rewrite
    could not separate a file from the message. (The parts a copy keeps were looked into
    already: the inspector remembers them.)"""
    for message in messages:
        if message.link_id is None:
            continue  # the original, as classified, for recipients inside
        _, again = parse_and_classify(message.data, limits, inspector)
        left = [a.content.reason if a.content and not a.content.clean else a.filename
                for a in again.attachments if needs_password(a)] + list(again.uninspectable)
        if left:
            log.error("a converted copy still holds: %s", left[0])
            raise RewriteError(f"a converted copy still holds {left[0]}")


def _reply_from_result(result: DeliveryResult) -> Reply:
    match = _ENHANCED.match(result.message or "")
    if match:
        enhanced, text = match.group(1), match.group(2)
    else:
        enhanced = "4.4.0" if result.code < 500 else "5.0.0"
        text = result.message or "next hop refused the message"
    code = result.code if 400 <= result.code < 600 else 451
    return Reply(code, enhanced, f"next hop: {text}")


class Relay:
    def __init__(
        self,
        config: Config,
        db: Database,
        writer: TransferWriter,
        next_hop: NextHop,
        signer: DkimSigner,
        templates,
        clock: Callable[[], datetime],
        notices: NoticeQueue | None = None,
        wake_notices: Callable[[], None] = lambda: None,
        unlocker: PasswordMailUnlocker | None = None,
        scanner: ClamdScanner | None = None,
    ):
        self._unlocker = unlocker
        self._scanner = scanner
        self._notices = notices
        self._wake_notices = wake_notices
        self._config = config
        self._db = db
        self._writer = writer
        self._next_hop = next_hop
        self._signer = signer
        self._templates = templates
        self._clock = clock
        self._inspection = InspectionLimits(
            max_expanded=config.smtp.max_expanded_size,
            max_nesting=config.smtp.max_file_nesting,
            timeout=config.smtp.inspect_timeout.total_seconds(),
        )

    async def handle(self, envelope: Envelope, raw: bytes) -> Outcome:
        outcome = Outcome(reply=OK)
        try:
            await self._handle(envelope, raw, outcome)
        except _REFUSALS as error:
            # The message's fault (or, for a timeout, the moment's), answered with its reason:
            # the message line says it all.
            outcome.reply = reply_for_exception(error)
            outcome.decision = "refused" if outcome.reply.code >= 500 else "deferred"
            outcome.notes.append(f"{type(error).__name__}: {error}")
        except Exception as error:  # fail closed: our trouble is the sender's retry
            log.exception("relay failed: %s", type(error).__name__)
            outcome.reply = reply_for_exception(error)
            outcome.notes.append(type(error).__name__)
        return outcome

    async def _handle(self, envelope: Envelope, raw: bytes, outcome: Outcome) -> None:
        if b"\x00" in raw:  # readers disagree about NUL (C strings end there): one reading
            smuggling = _NUL_DOT_LINE.search(raw)
            outcome.reply, outcome.decision = (NUL_DOT_LINE if smuggling else NUL_IN_MESSAGE,
                                               "refused")
            return
        # One reading of the bytes: line ends as the next hop will get them (CRLF only) are
        # what we classify, so a CR CR LF or bare LF cannot make us see a different message.
        raw = crlf_line_endings(raw)
        fingerprint = message_fingerprint(envelope, raw)
        served = await asyncio.to_thread(self._db.delivered_recipients, fingerprint)
        remaining = tuple(r for r in envelope.rcpt_tos if r not in served)
        if not remaining:
            outcome.reply, outcome.decision = ALREADY_DELIVERED, "duplicate"
            return
        envelope = replace(envelope, rcpt_tos=remaining)
        limits = MimeLimits.from_settings(self._config.smtp)
        # Files are looked into only where that can matter: a copy leaving the organisation
        # under a policy that converts.
        inspector = (content_inspector(limits, self._inspection)
                     if needs_inspection(self._config, envelope) else None)
        message, classification = await asyncio.to_thread(
            parse_and_classify, raw, limits, inspector
        )
        decision = decide(self._config, envelope, classification)
        outcome.department, outcome.decision = decision.department, decision.reason
        outcome.internal = sum(1 for r in decision.recipients if r.internal)
        outcome.external = len(decision.recipients) - outcome.internal
        outcome.notes.extend(classification.notes)
        if decision.refusal is not None:
            outcome.reply = Reply(554, decision.refusal.enhanced, decision.refusal.text)
            outcome.notes.extend(classification.uninspectable or classification.opaque)
            return
        outcome.notes.extend(
            f"corrupt-zip held back: {a.zip.reason}"
            for a in decision.to_convert if a.zip.verdict is ZipVerdict.CORRUPT_ZIP
        )
        if self._unlocker is not None:
            verdict = await self._unlocker.handle(envelope, message, classification, decision.policy)
            if verdict is not None:
                envelope = await self._after_password_mail(verdict, envelope, fingerprint, outcome)
                if envelope is None:
                    return
                decision = decide(self._config, envelope, classification)

        if decision.converting and self._scanner is not None:
            if not await self._scan_passes(envelope, message, fingerprint, decision, outcome):
                return
        transfer = None
        if decision.converting:
            facts = MessageFacts(
                fingerprint, _header_text(message, "Message-ID"), _header_text(message, "Subject")
            )
            transfer = await self._writer.store(envelope, decision, facts, self._clock())
            outcome.transfer_id = transfer.transfer_id
            outcome.converted_files = len(transfer.files)
            if not transfer.reused:
                outcome.bytes_stored = sum(f.size for f in transfer.files)
        try:
            messages = await self._build_messages(envelope, raw, message, decision, transfer)
            if inspector is not None and transfer is not None:
                await asyncio.to_thread(_verify_converted, messages, limits, inspector)
        except BaseException:
            if transfer is not None:  # nothing left the gateway: the links must not stay
                await self._writer.discard(transfer)
            raise
        outcome.reply = await self._deliver_all(
            fingerprint, messages, transfer, decision.policy, outcome
        )
        crash_point("relay.recorded")

    async def _scan_passes(
        self, envelope: Envelope, message, fingerprint: str, decision: Decision, outcome: Outcome
    ) -> bool:
        """False (with the reply set) when what we would store is infected or cannot be scanned
        and the policy says wait. The admin hears of an infection; the sender gets the bounce."""
        try:
            infection = await find_infection(self._scanner, decision)
        except (ScanUnavailable, ScanError) as error:
            if decision.policy.on_scan_error == "tempfail":
                outcome.reply, outcome.decision = SCAN_UNAVAILABLE, "scan-unavailable"
                outcome.notes.append(f"scan unavailable: {error}")
                return False
            log.warning("scan unavailable, storing unscanned (on_scan_error=allow): %s", error)
            outcome.notes.append("stored unscanned")
            return True
        if infection is None:
            return True
        outcome.reply, outcome.decision = infection.reply(), "virus"
        outcome.notes.append(f"virus {infection.signature}")
        facts = {"sender": envelope.mail_from or "<>", "file": infection.filename,
                 "signature": infection.signature, "recipients": len(envelope.rcpt_tos)}
        admin = self._config.scan.admin_address
        now = self._clock()

        def record() -> None:
            with self._db.transaction():
                self._db.append_event("scan.infected", now, detail=facts)
                if admin:  # once per message, however often the sending MTA retries
                    OutboxStore(self._db).enqueue(
                        kind="virus-refused", now=now, due_at=now,
                        dedupe_key=f"virus-refused:{fingerprint}",
                        payload={**facts, "address": admin, "locale": decision.policy.locale,
                                 "subject": _header_text(message, "Subject"),
                                 "message_id": _header_text(message, "Message-ID")},
                    )

        await asyncio.to_thread(record)
        self._wake_notices()
        return False

    async def _after_password_mail(
        self, verdict: UnlockVerdict, envelope: Envelope, fingerprint: str, outcome: Outcome
    ) -> Envelope | None:
        """What is left to relay of a PPAP password mail; None when nothing is."""
        outcome.decision = "password-mail"
        outcome.transfer_id = ",".join(verdict.transfer_ids)
        outcome.notes.append(f"password-mail {verdict.summary}")
        if verdict.tempfail:
            outcome.reply = SCAN_UNAVAILABLE
            return None
        self._wake_notices()
        held = {r.lower() for r in verdict.held}
        if not held:
            return envelope
        now = self._clock()
        first_transfer = verdict.transfer_ids[0]

        def remember() -> None:  # so the sender's retry does not pass it on after all
            with self._db.transaction():
                for rcpt in envelope.rcpt_tos:
                    if rcpt.lower() in held:
                        self._db.record_delivery(fingerprint, rcpt, now,
                                                 transfer_id=first_transfer)

        await asyncio.to_thread(remember)
        remaining = tuple(r for r in envelope.rcpt_tos if r.lower() not in held)
        if not remaining:
            outcome.reply = OK
            return None
        return replace(envelope, rcpt_tos=remaining)

    async def _build_messages(
        self, envelope: Envelope, raw: bytes, parsed, decision: Decision,
        transfer: StoredTransfer | None,
    ) -> list[OutgoingMessage]:
        def outgoing(rcpts: tuple[str, ...], data: bytes, link_id: str | None = None):
            return OutgoingMessage(
                envelope.mail_from, rcpts, data, link_id, envelope.smtputf8, envelope.body_8bit
            )

        passing = tuple(r.address for r in decision.recipients if r.action is Action.PASS)
        messages = [outgoing(passing, raw)] if passing else []
        if transfer is None:
            return messages
        paths = [a.path for a in decision.to_convert]
        for index, link in enumerate(transfer.links):
            # The tree parsed for classification serves the last copy; the others parse anew.
            tree = parsed if index == len(transfer.links) - 1 else None
            data = await asyncio.to_thread(
                self._rewrite_for, raw, tree, paths, decision, transfer, link
            )
            messages.append(outgoing((link.recipient,), data, link.link_id))
        return messages

    def _rewrite_for(
        self, raw: bytes, tree, paths, decision: Decision, transfer: StoredTransfer, link
    ) -> bytes:
        notice = Notice(
            locale=decision.policy.locale,
            files=tuple(NoticeFile(f.display_name, f.size) for f in transfer.files),
            url=f"{self._config.portal.public_url}/d/{link.token}",
            expires_at=transfer.expires_at.astimezone(self._config.gateway.timezone),
            password=transfer.password_channel,
            double_zip=any(a.zip.nested_zip_names for a in decision.to_convert),
        )
        text, html = render_notice(self._templates, notice)
        root = tree if tree is not None else parse_message(raw)
        return self._signer.sign(rewrite_parsed(root, paths, text, html))

    async def _deliver_all(
        self, fingerprint: str, messages: list[OutgoingMessage], transfer: StoredTransfer | None,
        policy: Policy, outcome: Outcome,
    ) -> Reply:
        temporary: Reply | None = None
        permanent: Reply | None = None
        refused: list[str] = []
        for message in messages:
            result = await self._next_hop.deliver(message)
            try:
                due_now = await asyncio.to_thread(
                    self._record, fingerprint, message, result, transfer, policy
                )
            except Exception as error:
                if not result.accepted or message.link_id is not None:
                    raise  # a link left pending must not look delivered: 4xx, the retry mends
                # The next hop has this unchanged copy: a 4xx now would make the retry send it
                # again, so it counts as delivered though the store could not say so.
                log.error("delivered but not recorded (%s): %s", type(error).__name__, error)
                outcome.notes.append("delivery not recorded")
                due_now = False
            if due_now:
                self._wake_notices()
            if result.accepted and message.link_id:
                outcome.links_created += 1
            if not result.accepted:
                reply = _reply_from_result(result)
                if result.temporary:
                    temporary = temporary or reply
                else:
                    permanent = permanent or reply
                    refused.extend(message.rcpt_tos)
                continue
            for rcpt, (code, text) in result.rejected_recipients.items():
                reply = _reply_from_result(DeliveryResult(False, code, text))
                if 400 <= code < 500:
                    temporary = temporary or reply
                else:
                    permanent = permanent or reply
                    refused.append(rcpt)
        if transfer is not None:
            delivered = await asyncio.to_thread(self._db.links_of, transfer.transfer_id)
            if not any(link.state == "active" for link in delivered):
                await self._writer.discard(transfer)
        if temporary:
            return temporary
        if permanent:
            names = ", ".join(refused[:5])
            return Reply(permanent.code, permanent.enhanced, f"{permanent.text} ({names})")
        return OK

    def _record(
        self, fingerprint: str, message: OutgoingMessage, result: DeliveryResult,
        transfer: StoredTransfer | None, policy: Policy,
    ) -> bool:
        """Commit what the next hop's answer means; True when a notice is due at once."""
        now = self._clock()
        transfer_id = transfer.transfer_id if transfer else None
        due_now = False
        with self._db.transaction():
            if result.accepted:
                for rcpt in message.rcpt_tos:
                    if rcpt not in result.rejected_recipients:
                        self._db.record_delivery(
                            fingerprint, rcpt, now, transfer_id=transfer_id, link_id=message.link_id
                        )
                if message.link_id:
                    self._db.activate_link(message.link_id, now)
                    self._db.set_transfer_state(transfer_id, "active")
                    self._db.append_event(
                        "link.delivered", now, transfer_id=transfer_id,
                        link_id=message.link_id, recipient=message.rcpt_tos[0],
                    )
                    if self._notices is not None:
                        due_now = self._notices.link_delivered(
                            transfer, message.link_id, policy, now
                        )
            elif message.link_id:
                self._db.fail_links([message.link_id])
                self._db.append_event(
                    "link.delivery_failed", now, transfer_id=transfer_id, link_id=message.link_id,
                    recipient=message.rcpt_tos[0], detail={"code": result.code},
                )
        return due_now
