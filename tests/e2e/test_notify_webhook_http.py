"""The signed webhook sender against a real local aiohttp server that checks the HMAC, alone and
driven by the outbox worker (the signature scheme on its own: tests/unit/test_notify_webhook.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Self, TypeVar

import pytest
from aiohttp import web

from gateway.config import NotifySettings
from gateway.model import DeliveryResult, OutgoingMessage
from gateway.notify.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookCall,
    WebhookSender,
    verify_signature,
)
from gateway.notify.worker import GIVE_UP_NOTE, OutboxWorker
from gateway.outbound.smtp import SmtpNextHop
from gateway.store.crypto import open_small, seal_small
from gateway.store.db import Database
from gateway.store.outbox import OutboxItem, OutboxStore, new_outbox_id
from tests.support.clock import FakeClock
from tests.support.sink import RecordingSink

SECRET = b"0123456789abcdef-webhook-secret!"
MASTER_KEY = bytes(range(32))
PASSWORD = "Hk4-zQ9r-Wm2x"
SETTINGS = NotifySettings(
    from_address="ppap-gateway@city.example.lg.jp", retry_initial=timedelta(minutes=1),
    retry_max=timedelta(hours=1), max_age=timedelta(days=2), poll_interval=timedelta(seconds=60),
)
T = TypeVar("T")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed_ok: bool


class HookServer:
    """A receiving end as an integrator would write it: verify, then answer as scripted."""

    def __init__(self, secret: bytes = SECRET, statuses: tuple[int, ...] = ()) -> None:
        self.secret = secret
        self.statuses = list(statuses)
        self.calls: list[Received] = []
        self.release = asyncio.Event()  # a handler told to hang waits for this
        self.hang = False
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/elsewhere", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ok = verify_signature(
            self.secret, request.headers.get(TIMESTAMP_HEADER, ""), body,
            request.headers.get(SIGNATURE_HEADER, ""), now=time.time(),
        )
        self.calls.append(Received(request.path, dict(request.headers), body, ok))
        if self.hang:
            await self.release.wait()
        if not ok:
            return web.Response(status=401)
        status = self.statuses.pop(0) if self.statuses else 200
        if 300 <= status < 400:
            raise web.HTTPFound(self.url("/elsewhere"))
        return web.Response(status=status, text="secret-free answer")


def send_one(server_setup: Callable[[HookServer], None], call_for: Callable[[HookServer], WebhookCall],
             timeout: float = 2.0, secret: bytes = SECRET) -> tuple[DeliveryResult, HookServer]:
    async def main() -> tuple[DeliveryResult, HookServer]:
        async with HookServer() as server:
            server_setup(server)
            sender = WebhookSender(secret, timeout)
            try:
                return await sender.send(call_for(server)), server
            finally:
                await sender.close()

    return asyncio.run(main())


BODY = json.dumps({"recipient": "tanaka@partner.example.com", "password": PASSWORD}).encode()


# -- the sender against a real server ----------------------------------------------------------


def test_signed_call_reaches_the_server_and_verifies() -> None:
    before = int(time.time())
    result, server = send_one(lambda s: None, lambda s: WebhookCall(s.url(), BODY))
    assert result.accepted and result.code == 250
    [call] = server.calls
    assert call.signed_ok and call.body == BODY
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"] == "ppap-gateway"
    assert before <= int(call.headers[TIMESTAMP_HEADER]) <= int(time.time())


def test_a_server_with_another_secret_answers_401_and_that_is_permanent() -> None:
    result, server = send_one(lambda s: None, lambda s: WebhookCall(s.url(), BODY),
                              secret=b"not-the-servers-secret-at-all!!!")
    assert (result.accepted, result.code) == (False, 550) and "HTTP 401" in result.message
    assert [c.signed_ok for c in server.calls] == [False]


def test_redirects_are_not_followed() -> None:
    result, server = send_one(lambda s: s.statuses.append(302), lambda s: WebhookCall(s.url(), BODY))
    assert result.permanent and "HTTP 302" in result.message
    assert [c.path for c in server.calls] == ["/hook"]


def test_a_server_that_does_not_answer_in_time_is_temporary() -> None:
    def hang(server: HookServer) -> None:
        server.hang = True

    started = time.monotonic()
    result, _ = send_one(hang, lambda s: WebhookCall(s.url(), BODY), timeout=0.3)
    assert (result.temporary, result.message) == (True, "4.4.2 webhook timed out")
    assert time.monotonic() - started < 2


def test_a_refused_connection_is_temporary(closed_port: int) -> None:
    result, _ = send_one(lambda s: None, lambda s: WebhookCall(f"http://127.0.0.1:{closed_port}/", BODY))
    assert (result.code, result.message) == (451, "4.4.1 webhook unreachable")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "not a url", "http://[::1/hook", ""])
def test_an_unusable_url_is_permanent(url: str) -> None:
    result, _ = send_one(lambda s: None, lambda s: WebhookCall(url, BODY))
    assert result.permanent and result.message == "5.3.5 webhook URL is not usable"


def test_one_session_serves_many_calls_and_close_is_idempotent() -> None:
    async def main() -> list[bool]:
        async with HookServer() as server:
            sender = WebhookSender(SECRET, 2.0)
            results = [(await sender.send(WebhookCall(server.url(), BODY))).accepted for _ in range(3)]
            session = sender._session
            await sender.close()
            await sender.close()
            assert session is not None and session.closed
            return results

    assert asyncio.run(main()) == [True, True, True]


# -- driven by the worker ----------------------------------------------------------------------


class WebhookComposer:
    """A real, deterministic composer for the webhook kind (and mail for the give-up note)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def compose(self, item: OutboxItem) -> OutgoingMessage | WebhookCall:
        if item.kind == GIVE_UP_NOTE:
            data = f"Subject: gave up\r\n\r\n{json.dumps(item.payload)}\r\n".encode()
            return OutgoingMessage("ppap-gateway@city.example.lg.jp", ("kikaku@city.example.lg.jp",), data)
        password = open_small(MASTER_KEY, item.id.encode(), item.sealed).decode()
        body = {"recipient": "tanaka@partner.example.com", "password": password,
                "transfer_id": item.transfer_id, "expires_at": "2026-12-03T09:12:40+09:00"}
        return WebhookCall(self.url, json.dumps(body, sort_keys=True).encode())


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "gateway.sqlite3") as database:
        yield database


def enqueue_webhook(outbox: OutboxStore, clock: FakeClock) -> str:
    item_id = new_outbox_id()
    outbox.enqueue(
        kind="webhook-password", now=clock(), due_at=clock(), item_id=item_id, transfer_id="tr-1",
        link_id="ln-1", dedupe_key="webhook-password:ln-1",
        sealed=seal_small(MASTER_KEY, item_id.encode(), PASSWORD.encode()),
    )
    return item_id


def drive(db: Database, sink: RecordingSink, server_secret: bytes, statuses: tuple[int, ...],
          steps: Callable[[OutboxWorker, FakeClock, str], Awaitable[T]]) -> tuple[T, HookServer, str]:
    outbox, clock = OutboxStore(db), FakeClock()
    item_id = enqueue_webhook(outbox, clock)

    async def main() -> tuple[T, HookServer]:
        async with HookServer(server_secret, statuses) as server:
            sender = WebhookSender(SECRET, 2.0)
            hop = SmtpNextHop("127.0.0.1", sink.port, starttls="off", timeout=2.0, helo_name="gw.test")
            worker = OutboxWorker(outbox, WebhookComposer(server.url()), hop, sender, SETTINGS, clock)
            try:
                return await steps(worker, clock, item_id), server
            finally:
                await sender.close()
                await hop.close()

    outcome, server = asyncio.run(main())
    return outcome, server, item_id


def test_worker_sends_the_webhook_and_marks_it_sent(db: Database, sink: RecordingSink,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def steps(worker: OutboxWorker, clock: FakeClock, item_id: str) -> int:
        return await worker.run_once()

    handled, server, item_id = drive(db, sink, SECRET, (), steps)
    assert handled == 1
    [call] = server.calls
    assert call.signed_ok and json.loads(call.body)["password"] == PASSWORD
    item = OutboxStore(db).get(item_id)
    assert (item.state, item.sealed) == ("sent", None)
    assert [e.kind for e in db.events()] == ["outbox.sent.webhook-password"]
    assert PASSWORD not in caplog.text and call.body.decode() not in caplog.text


def test_worker_retries_a_503_after_the_backoff_then_sends(db: Database, sink: RecordingSink,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def steps(worker: OutboxWorker, clock: FakeClock, item_id: str) -> list[int]:
        first = await worker.run_once()
        item = OutboxStore(db).get(item_id)
        assert item.due_at == clock() + timedelta(minutes=1) and "HTTP 503" in item.last_error
        early = await worker.run_once()
        clock.advance(minutes=1)
        return [first, early, await worker.run_once()]

    handled, server, item_id = drive(db, sink, SECRET, (503,), steps)
    assert handled == [1, 0, 1]
    assert [c.signed_ok for c in server.calls] == [True, True]
    assert server.calls[0].body == server.calls[1].body
    assert OutboxStore(db).get(item_id).state == "sent"
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(("server_secret", "statuses", "answer"),
                         [(SECRET, (400,), "HTTP 400"), (b"the-receivers-other-secret-32by!", (), "HTTP 401")])
def test_worker_gives_up_on_a_4xx_and_notes_the_sender(
    db: Database, sink: RecordingSink, caplog: pytest.LogCaptureFixture,
    server_secret: bytes, statuses: tuple[int, ...], answer: str,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def steps(worker: OutboxWorker, clock: FakeClock, item_id: str) -> list[int]:
        return [await worker.run_once(), await worker.run_once()]

    handled, server, item_id = drive(db, sink, server_secret, statuses, steps)
    assert handled == [1, 1]  # the call, then the note to the sender
    assert len(server.calls) == 1
    outbox = OutboxStore(db)
    item = outbox.get(item_id)
    assert (item.state, item.sealed) == ("gave_up", None) and answer in item.last_error
    [note] = [i for i in outbox.items() if i.kind == GIVE_UP_NOTE]
    assert note.state == "sent" and answer in note.payload["error"]
    assert [m.rcpt_tos for m in sink.messages] == [["kikaku@city.example.lg.jp"]]
    assert PASSWORD not in caplog.text and server.calls[0].body.decode() not in caplog.text
    assert PASSWORD.encode() not in sink.messages[0].data
