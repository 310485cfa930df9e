"""The SMTP listener: aiosmtpd's protocol in our own event loop, with our replies and limits.

aiosmtpd answers many conditions without an enhanced status code (RFC 3463); we map a few fixed
texts to the replies in gateway.replies, and give every other 4xx/5xx line the code that fits
its reply code, so that each refusal names its class the way MTAs expect. On top of
aiosmtpd it enforces the resource limits of [smtp]: sessions (global and per client address),
an idle timeout that answers `421` before closing, a bound on the whole DATA phase, and a budget
of DATA bytes held in memory by all sessions together.

Once the final dot is in, the relay runs as a task of its own (RelaysInFlight): aiosmtpd cancels
a session whose client hangs up or half-closes, and a relay cancelled mid-way would leave a copy
the next hop already has unrecorded (sent again on the retry) and its transfer pending. So the
relay finishes whatever the client does, keeps the session's slot and DATA budget until it ends,
and the gateway's stop() waits for it.

AUTH: aiosmtpd calls its authenticator synchronously, so a password check (scrypt, ~100 ms) would
hold every session; ours is a coroutine (smtp/access.py) that GatewaySMTP awaits, and aiosmtpd's
own parsing of LOGIN and PLAIN is kept.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, syntax

from gateway.config import SmtpSettings
from gateway.inflight import DataBudget
from gateway.smtp.drain import SHUTTING_DOWN, LiveSessions, SmtpListener
from gateway.replies import DATA_IN_FLIGHT_FULL, LINE_TOO_LONG, MESSAGE_TOO_BIG

_FIXED_REPLIES = {
    "552 Error: Too much mail data": MESSAGE_TOO_BIG.render(),
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG.render(),
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG.render(),
    "554 Command refused due to lack of security": "554 5.7.0 Command refused due to lack of security",
}
# The RFC 3463 / RFC 5248 code for a refusal that comes without one, by the reply code's meaning in
# RFC 5321, 3207, 4954 and 7504. 450, 550 and 554 cover mailbox, address and policy refusals
# alike: X.0.0, "other or undefined status".
_ENHANCED_FOR = {
    421: "4.3.2",  # service not available: system not accepting network messages
    450: "4.0.0",
    451: "4.3.0",  # local error in processing
    452: "4.3.1",  # insufficient system storage
    454: "4.7.0",  # TLS not available (RFC 3207)
    500: "5.5.2",  # syntax error, command unrecognised
    501: "5.5.4",  # syntax error in parameters or arguments
    502: "5.5.1",  # command not implemented
    503: "5.5.1",  # bad sequence of commands
    504: "5.5.4",  # command parameter not implemented
    521: "5.3.2",  # does not accept mail (RFC 7504)
    530: "5.7.0",  # authentication (or STARTTLS) required (RFC 4954, 3207)
    534: "5.7.9",  # authentication mechanism too weak (RFC 4954)
    535: "5.7.8",  # authentication credentials invalid (RFC 4954)
    538: "5.7.11",  # encryption required for the mechanism (RFC 4954)
    550: "5.0.0",
    551: "5.1.6",  # user not local
    552: "5.3.4",  # message too big for the system
    553: "5.1.0",  # mailbox name not allowed: sender or recipient, so "other address status"
    554: "5.0.0",  # transaction failed
    555: "5.5.4",  # MAIL/RCPT parameters not recognised
}
_REFUSAL_LINE = re.compile(r"([45]\d\d)([ -]?)(.*)", re.S)
_HAS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BUDGET_STEP = 64 * 1024  # DATA bytes are charged to the budget in steps, not per line
_IDLE_RESETS_PER_TIMEOUT = 4
_QUIT_GRACE = 2.0  # draining: seconds a client whose message is answered has to say QUIT  # during DATA the idle timer restarts at most this often

log = logging.getLogger("gateway.smtp")


@dataclass
class SessionSlots:
    """Open sessions, in total and per client address. Used from the event loop only."""

    max_sessions: int
    max_per_client: int
    open: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def admit(self, client: str) -> bool:
        held = self.by_client.get(client, 0)
        if self.open >= self.max_sessions or held >= self.max_per_client:
            return False
        self.open += 1
        self.by_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        left = self.by_client.pop(client) - 1
        if left:
            self.by_client[client] = left


class RelaysInFlight:
    """The relays of received messages still running, each a task the session only waits for.

    A task is referenced here until it ends (the event loop keeps only weak references)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def run(self, relay: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(relay)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def finish(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for every relay running (and any that starts meanwhile),
        then cancel the rest, which roll back what they can; return how many were cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        late = list(self._tasks)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        return len(late)


def _log_failure(task: asyncio.Task) -> None:
    """For a relay whose session is gone: nobody else will see how it ended."""
    if not task.cancelled() and task.exception() is not None:
        log.error("relay for a departed client failed", exc_info=task.exception())


def _client_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else ""


def _peer_address(session: Any) -> str:
    """The client's address as the session saw it (it outlives the connection)."""
    peer = getattr(session, "peer", None)
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _bytes_to_reserve(mail_options: list[str], ceiling: int) -> int:
    """The SIZE= the client announced in MAIL FROM (RFC 1870); without one, the worst case.

    Postfix always announces SIZE, so it is admitted by what it will send. A client that sends
    more than it announced is charged as the bytes arrive (and refused if they do not fit)."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isascii() and value.isdigit():
            return min(int(value), ceiling)
    return ceiling


@dataclass(frozen=True)
class _CheckToAwait:
    """What aiosmtpd's LOGIN or PLAIN parsed, for the authenticator to check asynchronously."""

    mechanism: str
    auth_data: Any


class GatewaySMTP(SMTP):
    def __init__(
        self, handler: Any, *, line_length_limit: int, slots: SessionSlots, budget: DataBudget,
        data_timeout: float, relays: RelaysInFlight, sessions: LiveSessions, **kwargs: Any,
    ):
        # Read by SMTP.__init__ for the stream limit; real clients do send long lines.
        self.line_length_limit = line_length_limit
        self._slots, self._budget, self._data_timeout = slots, budget, data_timeout
        self._relays, self._sessions = relays, sessions
        self._close_after_reply = False  # draining: 421 once the message under way is answered
        self._relaying: asyncio.Task | None = None  # this session's latest relay
        self._client: str | None = None  # set while this session holds a slot
        self._refused = False  # over a session limit: greeted with 421, never served
        self._data_held = 0  # bytes charged to the budget by the current DATA
        self._in_data = False  # between 354 and the final dot: arriving bytes are activity
        self._idle_reset_at = 0.0
        super().__init__(handler, **kwargs)

    async def push(self, status: str) -> None:
        await super().push(with_enhanced_code(_FIXED_REPLIES.get(status, status)))

    # --- AUTH -------------------------------------------------------------------------

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """Called synchronously by aiosmtpd's auth_LOGIN/auth_PLAIN: hand the credentials
        back to our overrides, which await the check. Should anything else return this result
        unawaited, it is a failure (535), never a success."""
        if self._authenticator is None:
            return super()._authenticate(mechanism, auth_data)
        return AuthResult(success=False, handled=False,
                          auth_data=_CheckToAwait(mechanism, auth_data))

    async def _checked(self, parsed: AuthResult) -> AuthResult:
        pending = parsed.auth_data if isinstance(parsed, AuthResult) else None
        if not isinstance(pending, _CheckToAwait):
            return parsed  # aiosmtpd answered already (bad base64, "*", …)
        assert self._authenticator is not None and self.session is not None
        return await self._authenticator(
            self, self.session, self.envelope, pending.mechanism, pending.auth_data
        )

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))

    # --- sessions ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None and self._original_transport is None  # not STARTTLS
        if first:
            client = _client_address(transport)
            if self._sessions.refuse_new:
                self._refused = True
                self._say_and_close(SHUTTING_DOWN.format(host=self.hostname), transport)
                return
            if not self._slots.admit(client):
                self._refused = True
                self._say_and_close(
                    f"421 4.7.0 {self.hostname} too many connections, try again later", transport
                )
                return
            self._client = client
        super().connection_made(transport)
        if first:
            self._sessions.opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd never saw this connection
        if self._client is not None:
            client, self._client = self._client, None
            # A relay still running holds the slot: leaving must not let a client start more.
            self._after_relay(lambda: self._slots.release(client))
            self._sessions.closed(self)
        super().connection_lost(error)

    def drain(self) -> None:
        """Stop or reload: 421 now, unless a message is under way (MAIL given, or its relay
        running); then 421 as soon as that message is answered."""
        relaying = self._relaying is not None and not self._relaying.done()
        if relaying or getattr(self.envelope, "mail_from", None) is not None:
            self._close_after_reply = True
        else:
            self._say_and_close(SHUTTING_DOWN.format(host=self.hostname))

    def _message_answered(self) -> None:
        """Draining: the message under way has its reply. Its client may QUIT as usual; any
        other command is answered 421 (RFC 5321 §3.8), and silence too, after a moment."""
        if not self._close_after_reply:
            return
        shutting_down = SHUTTING_DOWN.format(host=self.hostname)

        async def refuse(_arg: str) -> None:
            self._say_and_close(shutting_down)

        self._smtp_methods = {
            name: method if name == "QUIT" else refuse
            for name, method in self._smtp_methods.items()
        }
        self.loop.call_later(_QUIT_GRACE, self._say_and_close, shutting_down)

    async def smtp_RSET(self, arg: str) -> None:
        await super().smtp_RSET(arg)
        self._message_answered()

    def _after_relay(self, release: Callable[[], None]) -> None:
        """Call `release` once this session's relay has ended (now, if none is running)."""
        relaying = self._relaying
        if relaying is None or relaying.done():
            release()
        else:
            relaying.add_done_callback(lambda _task: release())

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        # A DATA run ends only at ".\r\n", so the reader may wait long for one while bytes
        # keep coming: those bytes, not the runs, show that the client is not idle.
        if self._in_data:
            now = self.loop.time()
            if now - self._idle_reset_at >= self._timeout_duration / _IDLE_RESETS_PER_TIMEOUT:
                self._idle_reset_at = now
                self._reset_timeout()

    def eof_received(self) -> bool | None:
        return False if self._refused else super().eof_received()

    def _timeout_cb(self) -> None:
        # aiosmtpd just closes; a client that gets 421 first knows to try again later
        self._say_and_close(f"421 4.4.2 {self.hostname} Error: timeout exceeded")

    def _say_and_close(self, reply: str, transport: asyncio.BaseTransport | None = None) -> None:
        transport = transport or self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply.encode("ascii", "replace") + b"\r\n")  # type: ignore[attr-defined]
        transport.close()  # sends what is buffered first

    # --- DATA -------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading into one buffer (not an object per line), charged to the
        budget, bounded in time, and with the idle timer paused while the relay works."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        reserved = _bytes_to_reserve(self.envelope.mail_options, self.data_size_limit)
        if not self._budget.take(reserved):
            self._set_post_data_state()
            await self.push(DATA_IN_FLIGHT_FULL.render())
            self._message_answered()
            return
        self._data_held = reserved
        try:
            await self._data_transaction()
        finally:
            self._budget.give_back(self._data_held)
            self._data_held = 0

    async def _data_transaction(self) -> None:
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._in_data, self._idle_reset_at = True, self.loop.time()
        try:
            async with asyncio.timeout(self._data_timeout):
                received = await self._receive_data()
        except TimeoutError:
            self._say_and_close(
                f"421 4.4.2 {self.hostname} Error: DATA not complete within "
                f"{self._data_timeout:g} seconds"
            )
            return
        except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError):
            # Gone before the final dot (killed, reset, closed): what arrived is no message.
            # It lived only in this session's buffer, so nothing was relayed and nothing kept.
            log.info("client %s left during DATA, before the final dot: message abandoned, "
                     "nothing relayed or kept", _peer_address(self.session))
            raise
        finally:
            self._in_data = False
        if isinstance(received, str):
            self._set_post_data_state()
            await self.push(received)
            self._message_answered()
            return
        self.envelope.content = self.envelope.original_content = received
        # the relay's time is ours, not the client's idleness (its own timeout still runs)
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            status = await self._relay()
        finally:
            self._reset_timeout()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)
        self._message_answered()

    async def _relay(self) -> Any:
        """The DATA hook, run as its own task that the session's cancellation does not reach."""
        self._relaying = self._relays.run(self._call_handler_hook("DATA"))
        try:
            return await asyncio.shield(self._relaying)
        except asyncio.CancelledError:
            # The client hung up or half-closed: the relay goes on, holding the message, so
            # the bytes it was charged stay charged until it ends.
            held, self._data_held = self._data_held, 0
            self._after_relay(lambda: self._budget.give_back(held))
            self._relaying.add_done_callback(_log_failure)
            raise

    async def _receive_data(self) -> bytes | str:
        """The message, dot-unstuffed; or, read to its end, the reply that refuses it.

        Read in runs, not line by line: each read ends at the next ".\r\n" or at the stream
        limit, so a 20 MB base64 attachment takes a few hundred reads, not a quarter million.
        As in aiosmtpd, only CRLF "." CRLF ends the data (a bare LF or CR never does)."""
        content: list[bytes] = []  # the runs, still dot-stuffed; emptied once refused
        last = b"\r\n"  # the last bytes received: the DATA line ended with CRLF
        line_length = 0  # of the line the previous run ended in
        refusal: str | None = None
        received = 0
        while True:
            try:
                run = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as error:
                run = await self._reader.read(error.consumed)
            if run.endswith(b".\r\n") and (last + run)[-5:-3] == b"\r\n":
                received += len(run) - 3
                if refusal is None:
                    refusal = self._refusal_for(run[:-3], received, line_length)
                    content.append(run[:-3])
                break
            received += len(run)
            if refusal is None and (refusal := self._refusal_for(run, received, line_length)):
                # refused: hold nothing, and leave the budget to others, while reading to the end
                content = []
                self._budget.give_back(self._data_held)
                self._data_held = 0
            elif refusal is None:
                content.append(run)
            line_length = _open_line_length(run, line_length)
            last = (last + run)[-4:]
        if refusal is not None:
            return refusal
        return _unstuffed(b"".join(content))  # one copy of the runs, not a growing buffer's

    def _refusal_for(self, run: bytes, received: int, open_line: int) -> str | None:
        # +1: a bare LF or CR is measured as the CRLF it leaves with
        limit = self.line_length_limit
        if open_line + len(run) + 1 > limit and _may_hold_a_line_over(run, open_line, limit) \
                and _longest_line(run, open_line) > limit:
            return LINE_TOO_LONG.render()
        if self.data_size_limit and received > self.data_size_limit:
            return MESSAGE_TOO_BIG.render()
        if received > self._data_held:
            step = max(received - self._data_held, _BUDGET_STEP)
            if not self._budget.take(step):
                return DATA_IN_FLIGHT_FULL.render()
            self._data_held += step
        return None


def with_enhanced_code(reply: str) -> str:
    """`reply` with an enhanced status code on every 4xx/5xx line that has none."""
    if not isinstance(reply, str) or reply[:1] not in ("4", "5"):
        return reply
    return "\r\n".join(_line_with_code(line) for line in reply.split("\r\n"))


def _line_with_code(line: str) -> str:
    match = _REFUSAL_LINE.fullmatch(line)
    if match is None:
        return line
    code, separator, text = match.groups()
    if separator == "" and text:  # "5000 ..." is no reply line of ours to mend
        return line
    text = text.lstrip(" ")
    if _HAS_ENHANCED.match(text):
        return line
    enhanced = _ENHANCED_FOR.get(int(code), f"{code[0]}.0.0")
    return f"{code}{separator or ' '}{enhanced} {text}".rstrip(" ")


def _open_line_length(run: bytes, before: int) -> int:
    """Length of the line `run` ends in (0 after a line end), counting `before` if it has none."""
    end = max(run.rfind(b"\n"), run.rfind(b"\r"))
    return before + len(run) if end < 0 else len(run) - end - 1


def _lines(run: bytes) -> list[bytes]:
    """`run` cut at every line end: CRLF, bare LF or bare CR (only the end of DATA is CRLF-only)."""
    crlf = run.count(b"\r\n")
    if run.count(b"\r") == crlf and run.count(b"\n") == crlf:
        return run.split(b"\r\n")  # the usual case, without a regex
    return _LINE_END.split(run)


def _may_hold_a_line_over(run: bytes, open_line: int, limit: int) -> bool:
    """False when no line in `run` can be longer than `limit`, told from where its first and
    last line ends are (a few C-speed finds); True means _longest_line must measure."""
    ends = [position for position in (run.find(b"\r"), run.find(b"\n")) if position >= 0]
    if not ends:
        return open_line + len(run) > limit
    first, last = min(ends), max(run.rfind(b"\r"), run.rfind(b"\n"))
    return (open_line + first + 2 > limit or len(run) - last - 1 > limit
            or _line_end_free_block(run, first, last, limit))


def _line_end_free_block(run: bytes, first: int, last: int, limit: int) -> bool:
    """Whether some block of (limit - 2) // 2 bytes between `first` and `last` holds no line
    end: a line longer than `limit` (its CRLF counted) between them would hold one, so where
    every block has one, none is. A few finds per block, not a list of every line."""
    block = max(1, (limit - 2) // 2)
    for start in range(first + 1, last - block + 1, block):
        end = start + block
        if run.find(b"\n", start, end) < 0 and run.find(b"\r", start, end) < 0:
            return True
    return False


def _longest_line(run: bytes, open_line: int) -> int:
    """The longest line in `run` with its line end counted as the CRLF it leaves with, the first
    one continuing a line `open_line` long (the last one, unfinished, without)."""
    lines = _lines(run)
    if len(lines) == 1:
        return open_line + len(run)
    middle = max(map(len, lines[1:-1]), default=-2) + 2
    return max(open_line + len(lines[0]) + 2, middle, len(lines[-1]))


def _unstuffed(content: bytes) -> bytes:
    """RFC 5321 4.5.2: the first "." of every line is the client's transparency dot."""
    if b"." not in content:  # memchr: a base64 attachment has no "." (replace would search)
        return content
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")


def make_tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


async def start_smtp_server(
    handler: Any, settings: SmtpSettings, hostname: str, authenticator: Any = None,
    relays: RelaysInFlight | None = None, budget: DataBudget | None = None,
    slots: SessionSlots | None = None, socks: tuple[socket.socket, ...] = (),
) -> SmtpListener:
    """`relays`: where the listener's relays run, for the owner to wait on at stop; `budget`:
    the bytes in flight, shared with whatever else charges it (unlocking); `slots`: the
    session caps (shared by the workers of one `serve`); `socks`: listening sockets to serve
    (a worker's, inherited from the supervisor) instead of binding settings.listen."""
    loop = asyncio.get_running_loop()
    tls_context = make_tls_context(settings)
    slots = slots or SessionSlots(settings.max_sessions, settings.max_sessions_per_client)
    budget = budget if budget is not None else DataBudget(settings.max_data_in_flight)
    relays = relays if relays is not None else RelaysInFlight()
    sessions = LiveSessions()

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            line_length_limit=settings.max_line_length,
            slots=slots,
            budget=budget,
            data_timeout=settings.data_timeout.total_seconds(),
            relays=relays,
            sessions=sessions,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="ppap-gateway",
            tls_context=tls_context,
            timeout=settings.timeout.total_seconds(),
            authenticator=authenticator,
            auth_require_tls=True,
            # Without a users file there is nobody to authenticate: offer no mechanism.
            auth_exclude_mechanism=None if authenticator else ("LOGIN", "PLAIN"),
            loop=loop,
        )

    if socks:
        servers = [await loop.create_server(factory, sock=sock) for sock in socks]
    else:
        servers = [await loop.create_server(
            factory, host=settings.listen_host, port=settings.listen_port
        )]
    return SmtpListener(servers, sessions)
