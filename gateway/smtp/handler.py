"""aiosmtpd hooks: admit clients and recipients, hand DATA to the relay, answer what it says.

Receive only: no business logic here. Any unexpected error becomes `451 4.3.0`, never
aiosmtpd's default `500` with the exception text. The one log line per message is written
when the relay ends, whether or not its client stayed to hear the answer.
"""

from __future__ import annotations

import logging
import secrets
import time

from gateway.addresses import reverse_path
from gateway.log import MessageLogger
from gateway.model import Envelope
from gateway.ops.metrics import GatewayMetrics
from gateway.pipeline.relay import Relay
from gateway.replies import INTERNAL_ERROR, RELAY_DENIED, TOO_MANY_RECIPIENTS
from gateway.smtp.access import RelayAccess

log = logging.getLogger("gateway.smtp")


def _safe(address: str) -> str:
    return "".join(ch for ch in address if ch.isprintable())[:320]


def _client_gone(server) -> bool:
    """True when the session's connection closed while its message was relayed."""
    transport = getattr(server, "transport", None)
    return transport is None or transport.is_closing()


class GatewayHandler:
    def __init__(
        self, relay: Relay, access: RelayAccess, max_recipients: int, messages: MessageLogger,
        metrics: GatewayMetrics | None = None,
    ):
        self._relay = relay
        self._access = access
        self._max_recipients = max_recipients
        self._messages = messages
        self._metrics = metrics

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not self._access.may_relay(session):
            log.info("relay denied peer=%s rcpt=%s", session.peer, _safe(address))
            return f"{RELAY_DENIED.code} {RELAY_DENIED.enhanced} <{_safe(address)}>: {RELAY_DENIED.text}"
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return TOO_MANY_RECIPIENTS.render()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        txid = secrets.token_hex(6)
        started = time.monotonic()
        options = {o.upper() for o in envelope.mail_options}
        incoming = Envelope(
            mail_from=reverse_path(envelope.mail_from),  # `MAIL FROM:<>` is the null sender ""
            rcpt_tos=tuple(envelope.rcpt_tos),
            peer=str(session.peer[0]) if session.peer else "",
            helo=session.host_name or "",
            smtputf8=bool(envelope.smtp_utf8),
            body_8bit="BODY=8BITMIME" in options,
        )
        outcome = await self._relay.handle(incoming, envelope.original_content or b"")
        if _client_gone(server):
            outcome.notes.append("client gone")  # the reply below was never heard
        reply = outcome.reply.render(txid)
        seconds = time.monotonic() - started
        self._messages.message(txid, incoming, outcome, reply, seconds)
        if self._metrics is not None:
            self._metrics.message_relayed(
                outcome.decision, outcome.reply.code, seconds,
                outcome.bytes_stored, outcome.links_created,
            )
        return reply

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected error in SMTP session", exc_info=error)
        return INTERNAL_ERROR.render(secrets.token_hex(6))
