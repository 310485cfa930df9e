"""Run a real Gateway on a loopback ephemeral port in its own event-loop thread (as aiosmtpd's
Controller does), so synchronous tests can talk to it with smtplib.

The corpus, the fake clock and the test configuration live in socket-free modules
(tests.support.corpus, .clock, .config) that unit tests use; they are re-exported here for the
end-to-end tests, which need them together with a running gateway."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading

from gateway.app import Gateway
from gateway.config import Config
from gateway.eventloop import new_event_loop
from tests.support.clock import FakeClock
from tests.support.config import INTERNAL, PUBLIC_URL, make_config
from tests.support.corpus import CORPUS, Corpus, corpus_mail

__all__ = [
    "CORPUS", "INTERNAL", "PUBLIC_URL", "Corpus", "FakeClock", "RunningGateway", "corpus_mail",
    "make_config", "send", "send_and_leave", "send_corpus", "send_exact",
]


class RunningGateway:
    def __init__(self, config: Config, clock: FakeClock | None = None):
        self.clock = clock or FakeClock()
        self.gateway = Gateway(config, clock=self.clock)
        self.loop = new_event_loop()  # the loop `serve` runs on
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.gateway.smtp_port

    @property
    def db(self):
        return self.gateway.db

    def start(self) -> "RunningGateway":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self.loop.is_closed():
            return  # stopped already (a test that restarts the gateway)
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def advance(self, **delta) -> None:
        """Move the clock on and nudge the outbox worker, as if that much time had passed."""
        self.clock.advance(**delta)
        self.loop.call_soon_threadsafe(self.gateway.notify_wake.set)

    def call(self, coroutine):
        """Run a coroutine in the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def __enter__(self) -> "RunningGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def send(port: int, mail_from: str, rcpt_tos: list[str], data: bytes,
         mail_options: tuple[str, ...] = ()) -> tuple[int, str]:
    """Send one message; return the reply to DATA (or to the first refused command)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        code, text = client.mail(mail_from, list(mail_options))
        if code >= 400:
            return code, text.decode()
        for rcpt in rcpt_tos:
            code, text = client.rcpt(rcpt)
            if code >= 400:
                return code, text.decode()
        code, text = client.data(data)
        return code, text.decode()


def send_corpus(port: int, mail: Corpus) -> tuple[int, str]:
    options = ("BODY=8BITMIME",) if mail.side["envelope"].get("requires_8bitmime") else ()
    return send(port, mail.mail_from, mail.rcpt_tos, mail.raw, options)


def send_exact(port: int, mail_from: str, rcpt_tos: list[str], data: bytes) -> tuple[int, str]:
    """Send one message over a raw socket, its line ends exactly as given (smtplib would turn
    bare LF and CR into CRLF); only lines after a CRLF are dot-stuffed, as on the wire."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        replies = connection.makefile("rb")
        refused = _up_to_data(connection, replies, mail_from, rcpt_tos)
        if refused is not None:
            return refused
        connection.sendall(_on_the_wire(data) + b".\r\n")
        answer = _reply(replies)
        connection.sendall(b"QUIT\r\n")
        return answer


def send_and_leave(port: int, mail_from: str, rcpt_tos: list[str], data: bytes,
                   *, half_close: bool = False, leave_when=lambda: None) -> None:
    """Send one message and hang up after the final dot, never reading the answer (a client
    that timed out, crashed or lost its network), as soon as `leave_when()` returns;
    `half_close` only shuts down its sending side, as a client that is done talking does."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        replies = connection.makefile("rb")
        refused = _up_to_data(connection, replies, mail_from, rcpt_tos)
        assert refused is None, refused
        connection.sendall(_on_the_wire(data) + b".\r\n")
        leave_when()
        if half_close:
            connection.shutdown(socket.SHUT_WR)


def _on_the_wire(data: bytes) -> bytes:
    stuffed = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


def _reply(replies) -> tuple[int, str]:
    line = replies.readline()
    while line[3:4] == b"-":
        line = replies.readline()
    return int(line[:3]), line[4:].decode("utf-8", "replace").strip()


def _up_to_data(connection: socket.socket, replies, mail_from: str,
                rcpt_tos: list[str]) -> tuple[int, str] | None:
    """Greeting to the 354; the first refusal on the way, or None."""
    _reply(replies)
    for command in (b"EHLO client.test", f"MAIL FROM:<{mail_from}>".encode(),
                    *(f"RCPT TO:<{rcpt}>".encode() for rcpt in rcpt_tos), b"DATA"):
        connection.sendall(command + b"\r\n")
        code, text = _reply(replies)
        if code >= 400:
            return code, text
    return None
