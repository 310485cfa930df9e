"""Ask a clamd daemon whether a stream of bytes carries a virus (INSTREAM), and whether it is up.

The protocol (clamd(8)): every scan has its own connection, because clamd hangs up after
INSTREAM. The client sends `zINSTREAM\\0`, then the data as chunks — a 4-byte big-endian length,
then that many bytes — and a zero length to end. The verdict is one NUL-terminated line:

    stream: OK                               clean
    stream: Eicar-Test-Signature FOUND       infected (the signature's name)
    INSTREAM size limit exceeded. ERROR      clamd read the stream but could not judge it

A clamd ERROR is ScanError. No daemon, a timeout, a broken connection or a reply that is none of
these is ScanUnavailable: the caller applies its on_scan_error policy, never "clean".
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Iterator
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import TypeVar

CHUNK_SIZE = 64 * 1024
MAX_REPLY = 4096  # a verdict is one short line; more than this is not clamd talking
MAX_SIGNATURE = 200
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes including the terminating NUL

_END_OF_STREAM = struct.pack(">I", 0)
_T = TypeVar("_T")

Chunks = AsyncIterable[bytes] | Iterable[bytes] | bytes


class ClamdFailure(Exception):
    """clamd gave no verdict; `reason` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ScanUnavailable(ClamdFailure):
    """clamd could not be asked: not running, unreachable, too slow, or not speaking clamd."""


class ScanError(ClamdFailure):
    """clamd was asked and answered that it could not scan this stream (too large, say)."""


@dataclass(frozen=True)
class ScanResult:
    clean: bool
    signature: str | None = None  # the signature clamd found, when not clean


@dataclass(frozen=True)
class ClamdAddress:
    """Either a unix socket path, or a TCP host and port."""

    unix_path: str | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_clamd_address(text: str) -> ClamdAddress:
    """`unix:/run/clamav/clamd.ctl`, `/run/clamav/clamd.ctl`, `host:3310` or `[::1]:3310`."""
    text = text.strip()
    if text.startswith(("unix:", "/")):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"a clamd unix socket needs an absolute path, got {text!r}")
        if len(path.encode()) > MAX_UNIX_PATH:
            raise ValueError(f"unix socket path longer than {MAX_UNIX_PATH} bytes: {text!r}")
        return ClamdAddress(unix_path=path)
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected unix:/PATH or HOST:PORT for clamd, got {text!r}")
    return ClamdAddress(host=host, port=int(port))


class ClamdScanner:
    """One clamd, asked over a fresh connection for each scan, ping or version.

    `timeout` bounds each step separately — connecting, sending one chunk, and waiting for the
    reply after the last chunk (while clamd scans) — so a dead or silent daemon costs about one
    timeout. `max_stream` (clamd's StreamMaxLength, when known) stops a too-large stream here
    instead of uploading it only to be refused.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        chunk_size: int = CHUNK_SIZE,
        max_stream: int | None = None,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if max_stream is not None and max_stream < 0:
            raise ValueError(f"max_stream cannot be negative, got {max_stream}")
        self.address = parse_clamd_address(address)
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.max_stream = max_stream

    async def scan(self, chunks: Chunks) -> ScanResult:
        """The verdict on the bytes of `chunks` taken as one file."""
        reader, writer = await self._connect()
        try:
            writer.write(b"zINSTREAM\0")
            # Read concurrently: clamd answers "size limit exceeded" mid-stream and hangs up.
            reply = asyncio.ensure_future(_read_reply(reader))
            try:
                await self._send_stream(writer, chunks, reply)
                return _verdict(await self._step(reply, "waiting for the verdict"))
            finally:
                _discard(reply)
        finally:
            await _close(writer)

    async def ping(self) -> bool:
        """True when clamd answers PING with PONG within the timeout; never raises."""
        try:
            return await self._command(b"zPING\0") == "PONG"
        except ClamdFailure:
            return False

    async def version(self) -> str:
        """clamd's version line, e.g. `ClamAV 1.4.6/27000/Mon Jan  5 08:00:00 2026`."""
        reply = await self._command(b"zVERSION\0")
        if not reply.startswith("ClamAV "):
            raise ScanUnavailable(f"clamd at {self.address}: unexpected reply {_printable(reply)!r}")
        return _printable(reply)

    async def _command(self, command: bytes) -> str:
        reader, writer = await self._connect()
        try:
            writer.write(command)
            await self._step(writer.drain(), "sending a command")
            return await self._step(_read_reply(reader), "waiting for the reply")
        finally:
            await _close(writer)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address.unix_path is not None:
            opening = asyncio.open_unix_connection(self.address.unix_path, limit=MAX_REPLY)
        else:
            opening = asyncio.open_connection(self.address.host, self.address.port, limit=MAX_REPLY)
        return await self._step(opening, "connecting")

    async def _send_stream(
        self, writer: asyncio.StreamWriter, chunks: Chunks, reply: asyncio.Future[str]
    ) -> None:
        sent = 0
        async with aclosing(_pieces(chunks, self.chunk_size)) as pieces:
            async for piece in pieces:
                if reply.done():
                    return  # clamd already answered (an error): its reply says why
                sent += len(piece)
                if self.max_stream is not None and sent > self.max_stream:
                    raise ScanError(f"stream larger than {self.max_stream} bytes, clamd's limit")
                if not await self._send(writer, struct.pack(">I", len(piece)) + piece):
                    return
        await self._send(writer, _END_OF_STREAM)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """False when clamd hung up, which it does after answering early."""
        try:
            writer.write(data)
            await self._step(writer.drain(), "sending the stream")
        except ScanUnavailable as failure:
            if isinstance(failure.__cause__, ConnectionError):
                return False
            raise
        return True

    async def _step(self, step: Awaitable[_T], doing: str) -> _T:
        """Await one network step within the timeout, turning every failure into ScanUnavailable."""
        where = f"clamd at {self.address}"
        try:
            return await asyncio.wait_for(step, self.timeout)
        except TimeoutError:
            raise ScanUnavailable(f"{where}: no progress within {self.timeout:g}s {doing}") from None
        except asyncio.IncompleteReadError:
            raise ScanUnavailable(f"{where}: connection closed {doing}") from None
        except asyncio.LimitOverrunError:
            raise ScanUnavailable(f"{where}: reply too long, not clamd {doing}") from None
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error) or type(error).__name__
            raise ScanUnavailable(f"{where}: {reason} {doing}") from error


async def _read_reply(reader: asyncio.StreamReader) -> str:
    line = await reader.readuntil(b"\0")
    return line[:-1].decode("utf-8", "replace")


def _verdict(reply: str) -> ScanResult:
    if reply == "stream: OK":
        return ScanResult(clean=True)
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        signature = _printable(reply[len("stream: ") : -len(" FOUND")].strip())
        if signature:
            return ScanResult(clean=False, signature=signature[:MAX_SIGNATURE])
    if reply.endswith(" ERROR"):
        raise ScanError(f"clamd: {_printable(reply.removesuffix(' ERROR'))}")
    raise ScanUnavailable(f"unexpected reply from clamd: {_printable(reply)!r}")


def _printable(text: str) -> str:
    """Printable ASCII only, bounded: clamd's words end up in logs, mails and web pages."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:MAX_REPLY]).strip()


async def _pieces(chunks: Chunks, size: int) -> AsyncIterator[bytes]:
    """The data re-cut into pieces of at most `size` bytes; empty chunks vanish, since an empty
    piece would tell clamd the stream has ended."""
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = (bytes(chunks),)
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            for piece in _split(chunk, size):
                yield piece
    else:
        for chunk in chunks:
            for piece in _split(chunk, size):
                yield piece


def _split(chunk: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(chunk).cast("B")
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])  # a copy: the caller may reuse its buffer


def _discard(task: asyncio.Future[str]) -> None:
    """Cancel a reply reader we no longer need, and retrieve its exception so none is logged."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _close(writer: asyncio.StreamWriter) -> None:
    # abort, not close: a silent daemon would make close() wait forever to flush.
    writer.transport.abort()
    with suppress(OSError):
        await writer.wait_closed()
