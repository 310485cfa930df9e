"""The DATA the next hop gets a chunk at a time is, byte for byte, what aiosmtplib's data()
would have sent for the same CRLF message (its rule, restated here: every line end CRLF, a
CRLF at the end, a "." at the start of a line doubled), wherever the chunks fall."""

from __future__ import annotations

import random
import re

from gateway.outbound.data_stream import stuffed_chunks

PIECES = [b"a", b"bc", b".", b"..", b"\r\n", b"\r\n.", b"\r\n..\r\n", b"x.y", b"\r\n.\r\n"]


def aiosmtplib_body(data: bytes) -> bytes:
    """aiosmtplib's protocol.py: normalize_message_line_endings, then PERIOD_REGEX."""
    data = re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", data)
    data = data if data.endswith(b"\r\n") else data + b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data)


def test_random_messages_are_stuffed_as_aiosmtplib_stuffs_them_whatever_the_chunk():
    """Lines of dots (the end-of-data line among them), a dot at the very start, a message
    without its last CRLF, the empty message; chunks of 1, 2, 3, 7 and 64 bytes."""
    rng = random.Random("data-stream")
    for _ in range(3000):
        data = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        expected = aiosmtplib_body(data)
        for chunk in (1, 2, 3, 7, 64):
            assert b"".join(stuffed_chunks(data, chunk)) == expected, (data, chunk)


def test_a_large_message_goes_in_pieces_of_whole_lines_near_the_chunk_size():
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n"
    data = line * 100_000 + b".hidden\r\n" + line
    pieces = list(stuffed_chunks(data, 64 * 1024))
    assert all(piece.endswith(b"\r\n") for piece in pieces)
    assert max(map(len, pieces)) < 64 * 1024 + 2 * len(line)
    assert b"".join(pieces) == aiosmtplib_body(data)
