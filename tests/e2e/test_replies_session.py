"""Unexpected trouble in a real SMTP session, where the relay or the handler breaks, is 451 4.3.0
and no exception text leaks (the failure → reply table itself: tests/unit/test_replies.py)."""

import asyncio
import ipaddress
import logging
import re

import aiosmtplib

from gateway.app import Gateway
from gateway.config import SmtpSettings
from gateway.log import MessageLogger
from gateway.smtp.access import RelayAccess
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.server import start_smtp_server
from tests.support.running import RunningGateway, corpus_mail, make_config, send_corpus


SECRET = "secret-detail /srv/ppap/data/keys/master.key"


class ExplodingNextHop:
    """A next hop with a bug: deliver() raises an error whose text must never reach the client."""

    async def deliver(self, message):
        raise RuntimeError(SECRET)

    async def check(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "exploding test hop"


class ExplodingRelay:
    async def handle(self, envelope, raw):
        raise RuntimeError(SECRET)


def _assert_generic_451(code: int, text: str, log_text: str) -> None:
    assert code == 451 and text.startswith("4.3.0 "), (code, text)
    assert re.search(r"\[[0-9a-f]{12}\]$", text), "the transaction id lets an admin find the log line"
    assert "secret" not in text and "RuntimeError" not in text
    assert "Traceback" in log_text and SECRET in log_text


def test_a_bug_in_delivery_during_a_real_session_is_451_4_3_0_and_logged(tmp_path, caplog):
    mail = corpus_mail("13_no_attachment")
    running = RunningGateway(make_config(tmp_path, "smtp://127.0.0.1:9"))
    running.gateway = Gateway(running.gateway.config, clock=running.clock, next_hop=ExplodingNextHop())
    with caplog.at_level(logging.ERROR), running:
        code, text = send_corpus(running.port, mail)
    _assert_generic_451(code, text, caplog.text)


def test_an_error_escaping_the_handler_is_451_4_3_0_not_aiosmtpds_500(caplog):
    handler = GatewayHandler(
        ExplodingRelay(), RelayAccess([ipaddress.ip_network("127.0.0.0/8")]), 10, MessageLogger()
    )

    async def session() -> tuple[int, str]:
        server = await start_smtp_server(handler, SmtpSettings(listen_port=0), "gw.test")
        try:
            port = server.port
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
            async with client:
                await client.sendmail("a@city.example.lg.jp", ["b@partner.example.com"], b"\r\nx\r\n")
        except aiosmtplib.SMTPResponseException as refused:
            return refused.code, refused.message
        finally:
            await server.close()
        return 250, "accepted"

    with caplog.at_level(logging.ERROR):
        code, text = asyncio.run(session())
    _assert_generic_451(code, text, caplog.text)
