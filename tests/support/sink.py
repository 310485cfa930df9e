"""A recording SMTP server for tests: a real aiosmtpd on 127.0.0.1 that keeps what it received.

It runs its own event loop in a thread (aiosmtpd's Controller), so synchronous tests and tests
that drive their own loop with asyncio.run can both talk to it. Tests can make it refuse, stall
or hang up at a chosen stage, count the TCP connections it accepted, and offer STARTTLS.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

Stage = Literal["MAIL", "RCPT", "DATA"]
_STAGES: tuple[Stage, ...] = ("MAIL", "RCPT", "DATA")


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]  # lists, like aiosmtpd's own Envelope
    data: bytes  # exactly as received, after dot-unstuffing
    mail_options: list[str]
    tls: bool  # the session had been upgraded with STARTTLS


@dataclass
class _ScriptedFailure:
    reply: str
    remaining: int
    recipient: str | None


class _Script:
    """What the sink should do wrong next; set from the test thread, read in the sink thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[Stage, list[_ScriptedFailure]] = {stage: [] for stage in _STAGES}
        self._delays: dict[Stage, list[float]] = {stage: [] for stage in _STAGES}
        self._reply_holds: list[float] = []
        self._quit_holds: list[float] = []
        self._closes = 0

    def add_failure(self, stage: Stage, failure: _ScriptedFailure) -> None:
        with self._lock:
            self._failures[stage].append(failure)

    def add_delay(self, stage: Stage, seconds: float) -> None:
        with self._lock:
            self._delays[stage].append(seconds)

    def add_reply_hold(self, seconds: float) -> None:
        with self._lock:
            self._reply_holds.append(seconds)

    def add_quit_hold(self, seconds: float) -> None:
        with self._lock:
            self._quit_holds.append(seconds)

    def add_close(self) -> None:
        with self._lock:
            self._closes += 1

    def take_failure(self, stage: Stage, recipient: str | None = None) -> str | None:
        with self._lock:
            for failure in self._failures[stage]:
                if failure.recipient is None or failure.recipient == recipient:
                    failure.remaining -= 1
                    if failure.remaining == 0:
                        self._failures[stage].remove(failure)
                    return failure.reply
        return None

    def take_delay(self, stage: Stage) -> float:
        with self._lock:
            return self._delays[stage].pop(0) if self._delays[stage] else 0.0

    def take_reply_hold(self) -> float:
        with self._lock:
            return self._reply_holds.pop(0) if self._reply_holds else 0.0

    def take_quit_hold(self) -> float:
        with self._lock:
            return self._quit_holds.pop(0) if self._quit_holds else 0.0

    def take_close(self) -> bool:
        with self._lock:
            if self._closes:
                self._closes -= 1
                return True
        return False

    def clear(self) -> None:
        with self._lock:
            for stage in _STAGES:
                self._failures[stage].clear()
                self._delays[stage].clear()
            self._reply_holds.clear()
            self._quit_holds.clear()
            self._closes = 0


class _RecordingHandler:
    """aiosmtpd hooks: accept everything unless the script says otherwise, and record each message."""

    def __init__(self, sink: RecordingSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await asyncio.sleep(self._sink._script.take_delay("MAIL"))
        refusal = self._sink._script.take_failure("MAIL")
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await asyncio.sleep(self._sink._script.take_delay("RCPT"))
        refusal = self._sink._script.take_failure("RCPT", address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self._sink._script.take_delay("DATA"))
        if self._sink._script.take_close():
            assert server.transport is not None
            server.transport.close()
            # connection_lost cancels this handler; never answer the DATA.
            await asyncio.get_running_loop().create_future()
        refusal = self._sink._script.take_failure("DATA")
        if refusal is not None:
            return refusal
        assert isinstance(envelope.original_content, bytes) and envelope.mail_from is not None
        self._sink._record(
            ReceivedMessage(
                mail_from="" if envelope.mail_from == "<>" else envelope.mail_from,  # null sender
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content,
                mail_options=list(envelope.mail_options),
                tls=session.ssl is not None,
            )
        )
        # The message is ours now (recorded) whether or not the client hears the 250.
        await asyncio.sleep(self._sink._script.take_reply_hold())
        return "250 2.0.0 queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self._sink._script.take_quit_hold())
        return "221 2.0.0 Bye"


class _CountingSMTP(SMTP):
    """aiosmtpd's SMTP server protocol, telling the sink when a connection opens and closes."""

    # Like Postfix, accept lines far over RFC 5321's 1000 octets: we test what the gateway sends.
    line_length_limit = 1_000_000

    def __init__(self, sink: RecordingSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again on the same connection
        super().connection_made(transport)
        if first:
            self._sink._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._sink._closed(self)


class _SinkController(Controller):
    def __init__(self, sink: RecordingSink, **kwargs: Any) -> None:
        super().__init__(_RecordingHandler(sink), **kwargs)
        self._sink = sink

    def factory(self) -> SMTP:
        return _CountingSMTP(self._sink, self.handler, **self.SMTP_kwargs)


def _free_port(host: str) -> int:
    # aiosmtpd's readiness probe connects to the configured port, so port=0 cannot be used.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class RecordingSink:
    """A next hop for tests. Restartable: stop() then start() listens on the same port again."""

    host = "127.0.0.1"

    def __init__(self, *, tls_context: ssl.SSLContext | None = None, smtputf8: bool = True) -> None:
        self.port = _free_port(self.host)
        self.messages: list[ReceivedMessage] = []
        self._tls_context = tls_context
        self._smtputf8 = smtputf8
        self._script = _Script()
        self._changed = threading.Condition()
        self._live: set[_CountingSMTP] = set()
        self._connections = 0
        self._controller: _SinkController | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RecordingSink:
        assert self._controller is None, "sink already running"
        controller = _SinkController(
            self,
            hostname=self.host,
            port=self.port,
            server_hostname="sink.test",  # skips a getfqdn() DNS lookup per connection
            decode_data=False,  # keep bytes, and advertise 8BITMIME
            enable_SMTPUTF8=self._smtputf8,
            tls_context=self._tls_context,
        )
        controller.start()
        self._controller = controller
        with self._changed:
            self._connections = 0  # forget the Controller's own readiness probe
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        # Hang up on clients first, so no transport outlives the sink's loop.
        asyncio.run_coroutine_threadsafe(self._hang_up(), controller.loop).result(timeout=5)
        controller.stop()

    async def _hang_up(self) -> None:
        for server in list(self._live):
            if server.transport is not None:
                server.transport.close()
        deadline = time.monotonic() + 2
        while self._live and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def __enter__(self) -> RecordingSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what arrived ------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """TCP connections accepted since the last start()."""
        with self._changed:
            return self._connections

    @property
    def open_connections(self) -> int:
        with self._changed:
            return len(self._live)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until `count` messages have arrived; from async code, run it in a thread."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"sink got {len(self.messages)} messages, wanted {count}")
            return list(self.messages)

    def clear(self) -> None:
        """Forget received messages and any failures still scripted."""
        with self._changed:
            self.messages.clear()
        self._script.clear()

    # -- scripted misbehaviour ---------------------------------------------------------------

    def fail_next(
        self, stage: Stage, code: int, text: str, count: int = 1, recipient: str | None = None
    ) -> None:
        """Answer the next `count` MAIL/RCPT/DATA (RCPT: only for `recipient`, if given) with an error."""
        if stage not in _STAGES or count < 1:
            raise ValueError(f"bad stage {stage!r} or count {count}")
        self._script.add_failure(stage, _ScriptedFailure(f"{code} {text}", count, recipient))

    def delay_next(self, stage: Stage, seconds: float) -> None:
        """Wait `seconds` before answering the next MAIL/RCPT/DATA (DATA: after the content)."""
        if stage not in _STAGES:
            raise ValueError(f"bad stage {stage!r}")
        self._script.add_delay(stage, seconds)

    def hold_reply_next(self, seconds: float) -> None:
        """Take the next message (it counts as received at once), then wait `seconds` before
        saying 250: a next hop that has the copy while its client still waits for the answer."""
        self._script.add_reply_hold(seconds)

    def hold_quit_next(self, seconds: float) -> None:
        """Wait `seconds` before answering the next QUIT: a slow goodbye."""
        self._script.add_quit_hold(seconds)

    def close_next(self) -> None:
        """Hang up, without answering, after receiving the next message content."""
        self._script.add_close()

    # -- called from the sink thread ---------------------------------------------------------

    def _record(self, message: ReceivedMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def _opened(self, server: _CountingSMTP) -> None:
        with self._changed:
            self._live.add(server)
            self._connections += 1

    def _closed(self, server: _CountingSMTP) -> None:
        with self._changed:
            self._live.discard(server)
