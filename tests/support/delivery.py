"""Messages for delivery tests and a next hop to give them to: a corpus mail with its envelope, a
small message full of dot lines, a loopback SmtpNextHop, and `run`, a fresh event loop for a test's
coroutine that always closes the hop's pooled connections (delivering opens sockets: only
end-to-end tests call `run` and `deliver_all`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.smtp import SmtpNextHop
from tests.support.corpus import CORPUS

SENDER = "kikaku@city.example.lg.jp"
ALICE = "alice@vendor.example.net"
T = TypeVar("T")


def corpus_message(name: str, **flags: bool) -> OutgoingMessage:
    envelope = json.loads((CORPUS / "mail" / f"{name}.json").read_text("utf-8"))["envelope"]
    data = (CORPUS / "mail" / f"{name}.eml").read_bytes()
    return OutgoingMessage(envelope["mail_from"], tuple(envelope["rcpt_to"]), data, **flags)


def simple_message(*recipients: str, **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "mail_from": SENDER,
        "rcpt_tos": recipients or (ALICE,),
        "data": b"Subject: hello\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def smtp_hop(port: int, **overrides: Any) -> SmtpNextHop:
    settings: dict[str, Any] = {"starttls": "off", "timeout": 2.0, "helo_name": "gateway.test"}
    settings.update(overrides)
    return SmtpNextHop("127.0.0.1", port, **settings)


def run(hop: SmtpNextHop, steps: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a test's coroutine on a fresh loop, always closing the hop's pooled connections."""

    async def main() -> T:
        try:
            return await steps()
        finally:
            await hop.close()

    return asyncio.run(main())


def deliver_all(hop: SmtpNextHop, *messages: OutgoingMessage) -> list[DeliveryResult]:
    async def steps() -> list[DeliveryResult]:
        return [await hop.deliver(message) for message in messages]

    return run(hop, steps)
