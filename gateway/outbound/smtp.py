"""The SMTP next hop: hand a finished message to the relay after us and report its verdict.

The DeliveryResult is what the answer stage mirrors to our client: the next hop's hard errors stay
permanent, everything else, our own network and disk trouble included, is temporary (451) so the
sending client keeps the message and retries. Nothing here raises for network or disk trouble.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Literal

import aiosmtplib
from aiosmtplib import SMTPResponse

from gateway.crashpoints import crash_point
from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.data_stream import send_data
from gateway.outbound.hop import failure
from gateway.wire import crlf_line_endings

StartTls = Literal["off", "opportunistic", "required"]
_STARTTLS_MODES = ("off", "opportunistic", "required")

# Everything aiosmtplib, the socket layer or TLS can throw at us while talking to the next hop
# (OSError includes ssl.SSLError and TimeoutError).
_NETWORK_ERRORS = (aiosmtplib.SMTPException, OSError)


class _Abandon(Exception):
    """Stop this transaction, drop the connection, and answer with `result`."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.message)
        self.result = result


def _result_for_error(error: BaseException) -> DeliveryResult:
    """Map a network-level exception to a temporary failure, most specific class first."""
    if isinstance(error, (aiosmtplib.SMTPTimeoutError, TimeoutError)):
        return failure(451, "4.4.2 next hop timed out")
    if isinstance(error, aiosmtplib.SMTPConnectResponseError):
        return failure(451, "4.4.2 next hop refused the session")
    if isinstance(error, aiosmtplib.SMTPConnectError):
        return failure(451, "4.4.1 next hop unreachable")
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return failure(451, "4.4.2 unexpected reply from next hop")
    return failure(451, "4.4.2 connection to next hop lost")


def _reply_text(text: str) -> str:
    """The next hop's reply text as one short line of printable ASCII, safe to pass on."""
    one_line = " ".join(text.split())
    return "".join(c if " " <= c <= "~" else "?" for c in one_line)[:200]


def _refusal(reply: SMTPResponse, rejected: dict[str, tuple[int, str]] | None = None) -> DeliveryResult:
    """The result for a refusing reply; _Abandon when the session cannot go on after it."""
    if reply.code == 421:  # the next hop is closing the session: a temporary failure on our side
        raise _Abandon(failure(451, "4.4.2 next hop is closing the connection", rejected))
    if not 400 <= reply.code < 600:
        raise _Abandon(failure(451, "4.4.2 unexpected reply from next hop", rejected))
    return failure(reply.code, _reply_text(reply.message), rejected)


_QUOTED_LOCAL_PART = re.compile(r'^"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"')
_UNSAFE_IN_PATH = re.compile(r"[\x00-\x20\x7f<>]")


def _smtp_path(address: str) -> bytes | None:
    """<address> for MAIL/RCPT, or None when it could not travel on a command line safely."""
    if _UNSAFE_IN_PATH.search(_QUOTED_LOCAL_PART.sub("", address, count=1)):
        return None
    try:
        return b"<" + address.encode("utf-8") + b">"
    except UnicodeEncodeError:  # lone surrogates
        return None


def _validate_helo_name(helo_name: str) -> None:
    if not (helo_name and helo_name.isascii() and helo_name.isprintable() and " " not in helo_name):
        raise ValueError(f"invalid HELO name {helo_name!r}")


class SmtpNextHop:
    """Relay to an SMTP server, keeping up to `pool_size` idle connections for reuse.

    One instance belongs to one event loop (its pooled connections are bound to it).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: StartTls,
        timeout: float,
        helo_name: str,
        pool_size: int = 4,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if starttls not in _STARTTLS_MODES:
            raise ValueError(f"starttls must be one of {', '.join(_STARTTLS_MODES)}, not {starttls!r}")
        if not 0 < port < 65536 or timeout <= 0 or pool_size < 0:
            raise ValueError(f"bad next hop port {port}, timeout {timeout} or pool size {pool_size}")
        _validate_helo_name(helo_name)
        self.host = host
        self.port = port
        self.starttls = starttls
        self.timeout = timeout
        self.helo_name = helo_name
        self.pool_size = pool_size
        self.tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"smtp://{host}:{self.port} (starttls {self.starttls})"

    async def deliver(self, message: OutgoingMessage) -> DeliveryResult:
        if not message.rcpt_tos:
            return failure(554, "5.5.1 no recipients")
        if _smtp_path(message.mail_from) is None:
            return failure(553, "5.1.7 sender address cannot be relayed")
        try:
            client = await self._acquire()
        except _Abandon as abandon:
            return abandon.result
        except _NETWORK_ERRORS as error:
            return _result_for_error(error)
        healthy = False
        try:
            result = await self._transact(client, message)
            healthy = True
            return result
        except _Abandon as abandon:
            return abandon.result
        except _NETWORK_ERRORS as error:
            return _result_for_error(error)
        finally:
            if healthy:
                self._release(client)
            else:
                client.close()

    async def check(self) -> bool:
        try:
            client = await self._acquire()
        except (_Abandon, *_NETWORK_ERRORS):
            return False
        self._release(client)
        return True

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._retire(client) for client in idle), *self._retiring)

    # -- connections -------------------------------------------------------------------------

    async def _acquire(self) -> aiosmtplib.SMTP:
        """An idle connection that still answers RSET, else a new one (only one retry)."""
        if self._idle:
            client = self._idle.pop()
            if await self._answers_rset(client):
                return client
            client.close()
        return await self._open()

    async def _answers_rset(self, client: aiosmtplib.SMTP) -> bool:
        if not client.is_connected:
            return False
        try:
            reply = await client.execute_command(b"RSET")
        except _NETWORK_ERRORS:
            return False
        return reply.code == 250

    def _release(self, client: aiosmtplib.SMTP) -> None:
        """Keep the connection idle, or retire it after deliver() has returned: the caller
        records the next hop's acceptance the moment it has it, and a crash before that record
        sends the message twice, so no QUIT may stand in between."""
        if client.is_connected and not self._closed and len(self._idle) < self.pool_size:
            self._idle.append(client)
            return
        task = asyncio.get_running_loop().create_task(self._retire(client))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, client: aiosmtplib.SMTP) -> None:
        """Say QUIT, close, and wait (briefly) until the socket is really closed.

        A TLS session closes with a close_notify exchange after close() returns; waiting for it
        means an event loop that ends right after close() leaves no half-closed socket behind.
        """
        sock = client.get_transport_info("socket") if client.is_connected else None
        try:
            if client.is_connected:
                await client.quit()
        except _NETWORK_ERRORS:
            pass
        finally:
            client.close()
        deadline = asyncio.get_running_loop().time() + min(self.timeout, 2.0)
        while sock is not None and sock.fileno() != -1:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)

    async def _open(self) -> aiosmtplib.SMTP:
        client = await self._connect()
        if self.starttls == "off":
            return client
        if not client.supports_extension("starttls"):
            if self.starttls == "required":
                client.close()
                raise _Abandon(failure(451, "4.7.0 next hop offers no STARTTLS"))
            return client
        try:
            await client.starttls(tls_context=self.tls_context)
            await client.ehlo()
            return client
        except _NETWORK_ERRORS:
            client.close()
        if self.starttls == "required":
            raise _Abandon(failure(451, "4.7.0 TLS handshake with next hop failed"))
        # Opportunistic: a failed handshake leaves the session unusable; plaintext beats no delivery.
        return await self._connect()

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.helo_name,
            timeout=self.timeout,
            start_tls=False,
        )
        await client.connect()  # closes itself if it fails
        try:
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        except BaseException:
            client.close()
            raise
        return client

    # -- one transaction ---------------------------------------------------------------------

    async def _transact(self, client: aiosmtplib.SMTP, message: OutgoingMessage) -> DeliveryResult:
        addresses = (message.mail_from, *message.rcpt_tos)
        utf8 = message.smtputf8 or not all(address.isascii() for address in addresses)
        options: list[bytes] = []
        if utf8:
            if not client.supports_extension("smtputf8"):
                return failure(553, "5.6.7 next hop lacks SMTPUTF8")
            options.append(b"SMTPUTF8")
        if message.body_8bit and client.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        sender = _smtp_path(message.mail_from)
        assert sender is not None  # checked in deliver()
        reply = await client.execute_command(b"MAIL", b"FROM:" + sender, *options)
        if not 200 <= reply.code < 300:
            return _refusal(reply)
        rejected = await self._send_recipients(client, message.rcpt_tos)
        if len(rejected) == len(message.rcpt_tos):
            return self._all_refused(rejected)
        # every line end CRLF on the wire (unless the relay made it so already)
        data = message.data if message.crlf_only else crlf_line_endings(message.data)
        return await self._send_data(client, data, rejected)

    async def _send_recipients(
        self, client: aiosmtplib.SMTP, recipients: tuple[str, ...]
    ) -> dict[str, tuple[int, str]]:
        rejected: dict[str, tuple[int, str]] = {}
        for recipient in recipients:
            path = _smtp_path(recipient)
            if path is None:
                rejected[recipient] = (553, "5.1.3 recipient address cannot be relayed")
                continue
            reply = await client.execute_command(b"RCPT", b"TO:" + path)
            if 200 <= reply.code < 300:
                continue
            refused = _refusal(reply, rejected)
            rejected[recipient] = (refused.code, refused.message)
        return rejected

    @staticmethod
    def _all_refused(rejected: dict[str, tuple[int, str]]) -> DeliveryResult:
        # Prefer a temporary code: the client then retries, and the 5xx recipients bounce later.
        replies = list(rejected.values())
        code, text = next((reply for reply in replies if reply[0] < 500), replies[0])
        return failure(code, text, rejected)

    async def _send_data(
        self, client: aiosmtplib.SMTP, data: bytes, rejected: dict[str, tuple[int, str]]
    ) -> DeliveryResult:
        try:
            # dot-stuffed and written a chunk at a time (data_stream.py); the line ends are
            # CRLF already (ours is the promise)
            reply = await send_data(client, data, client.timeout)
        except aiosmtplib.SMTPDataError as refused:
            return _refusal(SMTPResponse(refused.code, refused.message), rejected)
        crash_point("deliver.accepted")
        return DeliveryResult(
            accepted=True, code=reply.code, message=_reply_text(reply.message), rejected_recipients=rejected
        )


# -- configuration ---------------------------------------------------------------------------
