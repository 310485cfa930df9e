"""Send a message's DATA to the next hop a chunk at a time, dot-stuffed as it goes.

aiosmtplib's `data()` makes the whole message CRLF with a regular expression (a copy, and the
slowest step of relaying a large plain mail), dot-stuffs it (another copy when a line starts
with "."), appends the terminator (another) and hands it all to the transport (which keeps what
the socket did not take). The relay's copies are CRLF-only already, so here each chunk of
whole lines is stuffed and written, and the next waits until the transport has room: what is
held is a chunk, not the message. The exchange is aiosmtplib's own (its command lock, its
reply reader, its flow control); a connection without them is sent `data()` as before.
"""

from __future__ import annotations

import asyncio

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from gateway.wire import line_pieces

CHUNK = 256 * 1024
_NEEDED = ("write", "read_response", "_drain_helper", "_command_lock")


def stuffed_chunks(data: bytes, chunk: int = CHUNK):
    """data (CRLF line ends only) as dot-stuffed pieces of whole lines, ending with CRLF."""
    for position, stop in line_pieces(data, 0, chunk):
        piece = data[position:stop]
        # every piece starts a line: a "." there is stuffed as one after a CRLF inside it
        yield (b"." if piece.startswith(b".") else b"") + piece.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        yield b"\r\n"


async def send_data(client: aiosmtplib.SMTP, data: bytes, timeout: float | None) -> SMTPResponse:
    """DATA, the message, the final dot: the next hop's reply. Raises as aiosmtplib's data()
    does (SMTPDataError for a refusal, SMTPServerDisconnected or a timeout for trouble, after
    which the connection is closed)."""
    protocol = client.protocol
    if protocol is None or not all(hasattr(protocol, name) for name in _NEEDED):
        return await client.data(data, timeout=timeout)
    try:
        async with protocol._command_lock:  # noqa: SLF001 - the lock aiosmtplib's commands take
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=timeout)
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            for piece in stuffed_chunks(data):
                protocol.write(piece)
                await _room(protocol, timeout)
            protocol.write(b".\r\n")
            reply = await protocol.read_response(timeout=timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, ConnectionError):
        client.close()  # as data() does: a half-sent message leaves the connection unusable
        raise
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply


async def _room(protocol, timeout: float | None) -> None:
    """Wait until the transport has sent enough to take more (its high-water mark)."""
    try:
        await asyncio.wait_for(protocol._drain_helper(), timeout)  # noqa: SLF001
    except (TimeoutError, asyncio.TimeoutError):
        raise aiosmtplib.SMTPTimeoutError("Timed out sending the message") from None
