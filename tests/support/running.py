"""Run a real Gateway on a loopback ephemeral port in its own event-loop thread (as aiosmtpd's
Controller does), so synchronous tests can talk to it with smtplib."""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway.app import Gateway, with_ephemeral_port
from gateway.config import Config, build_config

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
INTERNAL = "city.example.lg.jp"
PUBLIC_URL = "https://files.city.example.lg.jp"


class FakeClock:
    """Injectable clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 11, 26, 0, 12, 40, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> None:
        self.now += timedelta(**kwargs)


def make_config(tmp_path: Path, next_hop_url: str, document: dict | None = None,
                overrides: tuple[str, ...] = ()) -> Config:
    base = {
        "gateway": {"internal_domains": [INTERNAL], "hostname": "gw.test"},
        "storage": {"data_dir": str(tmp_path / "data")},
        "portal": {"public_url": PUBLIC_URL},
        "next_hop": {"url": next_hop_url, "timeout": "5s", "starttls": "off"},
    }
    for section, values in (document or {}).items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return with_ephemeral_port(build_config(base, overrides, environ={}))


class RunningGateway:
    def __init__(self, config: Config, clock: FakeClock | None = None):
        self.clock = clock or FakeClock()
        self.gateway = Gateway(config, clock=self.clock)
        self.loop = asyncio.new_event_loop()
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


@dataclass
class Corpus:
    raw: bytes
    side: dict

    @property
    def mail_from(self) -> str:
        return self.side["envelope"]["mail_from"]

    @property
    def rcpt_tos(self) -> list[str]:
        return self.side["envelope"]["rcpt_to"]


def corpus_mail(name: str) -> Corpus:
    side = json.loads((CORPUS / "mail" / f"{name}.json").read_text(encoding="utf-8"))
    return Corpus((CORPUS / "mail" / f"{name}.eml").read_bytes(), side)


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
    stuffed = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        replies = connection.makefile("rb")

        def reply() -> tuple[int, str]:
            line = replies.readline()
            while line[3:4] == b"-":
                line = replies.readline()
            return int(line[:3]), line[4:].decode("utf-8", "replace").strip()

        reply()
        for command in (b"EHLO client.test", f"MAIL FROM:<{mail_from}>".encode(),
                        *(f"RCPT TO:<{rcpt}>".encode() for rcpt in rcpt_tos), b"DATA"):
            connection.sendall(command + b"\r\n")
            code, text = reply()
            if code >= 400:
                return code, text
        connection.sendall(stuffed + b".\r\n")
        answer = reply()
        connection.sendall(b"QUIT\r\n")
        return answer
