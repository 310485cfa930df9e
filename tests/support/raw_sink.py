"""Raw SMTP bytes for tests, both ways: a next hop that keeps the exact bytes of each DATA
phase, and a client that writes exactly the bytes it is given.

RecordingSink stores what aiosmtpd parsed (line endings and dot-stuffing already undone); RawSink
speaks just enough SMTP (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to keep the raw bytes
from after `354` up to and including the `CRLF.CRLF` that ended them, so tests can see bare
CR/LF and dot-stuffing as the receiver would. RawClient is smtplib without its line-end fixing.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Self

_END_OF_DATA = b"\r\n.\r\n"
_MAX_DATA = 64 * 1024 * 1024
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass(frozen=True)
class RawMessage:
    mail_from: bytes  # the MAIL command line as sent, without CRLF
    rcpt_tos: tuple[bytes, ...]  # the RCPT command lines
    wire: bytes  # DATA bytes as received, ending with CRLF.CRLF (or their head, see RawSink)
    size: int = 0  # how many DATA bytes arrived, whether or not all were kept

    def bare_line_ends(self) -> list[int]:
        """Offsets of every CR not followed by LF and every LF not preceded by CR."""
        return [match.start() for match in _BARE_CR_OR_LF.finditer(self.wire)]

    def lines(self) -> list[bytes]:
        """The CRLF lines of the content on the wire, terminator excluded, still dot-stuffed."""
        return self.wire[: -len(_END_OF_DATA)].split(b"\r\n")

    def content(self) -> bytes:
        """The message as the receiver stores it: one leading dot taken off each line."""
        return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in self.lines()) + b"\r\n"


class RawSink:
    """A loopback SMTP receiver in its own thread; `messages` fills as DATA phases end.

    With `keep_head`, only that many bytes of each DATA phase are kept (a test sending hundreds
    of megabytes through the gateway need not hold them twice)."""

    def __init__(self, keep_head: int | None = None) -> None:
        self._keep_head = keep_head
        self.messages: list[RawMessage] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[RawMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} messages, got {len(self.messages)}")

    async def _listen(self) -> asyncio.base_events.Server:
        return await asyncio.start_server(self._session, "127.0.0.1", 0, limit=_MAX_DATA)

    async def _shut_down(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._converse(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the client went away or sent too much: the session simply ends
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.sink ESMTP\r\n")
        mail_from, rcpt_tos = b"", []
        while True:
            line = (await reader.readuntil(b"\r\n"))[:-2]
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-raw.sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb in (b"HELO", b"NOOP"):
                writer.write(b"250 ok\r\n")
            elif verb == b"RSET":
                mail_from, rcpt_tos = b"", []
                writer.write(b"250 ok\r\n")
            elif verb == b"MAIL":
                mail_from, rcpt_tos = line, []
                writer.write(b"250 ok\r\n")
            elif verb == b"RCPT":
                rcpt_tos.append(line)
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                wire = await reader.readuntil(_END_OF_DATA)
                size, wire = len(wire), wire[:self._keep_head]
                with self._lock:
                    self.messages.append(RawMessage(mail_from, tuple(rcpt_tos), wire, size))
                mail_from, rcpt_tos = b"", []
                writer.write(b"250 ok: kept raw\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 not implemented\r\n")
            await writer.drain()


class RawClient:
    """One SMTP session on a plain socket; replies are read line by line, never more."""

    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        """`source`: the client's own address, e.g. another of 127.0.0.0/8 (Linux answers
        for all of it), so that one test can be many clients."""
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout,
            source_address=(source, 0) if source else None,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        """The next complete reply: its code and its lines joined by LF (b"" code 0 on EOF)."""
        lines = []
        while True:
            line = self._line()
            if not line:
                return 0, b"\n".join(lines)
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        """Wrap the socket in TLS after the server's 220 (the caller reads that reply)."""
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def rest(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        chunks = []
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def _line(self) -> bytes:
        # One byte at a time: nothing is read past the reply, so a TLS handshake can follow.
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = self.sock.recv(1)
            if not byte:
                break
            line += byte
        return bytes(line)
