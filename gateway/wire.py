"""Line ends as the SMTP wire allows them: CRLF only (RFC 5321 2.3.8).

Used by the delivery stage for every copy, by the DKIM signer before it signs (so that the
signature covers exactly the bytes sent) and by the rewriter for what it serialises; and the
pieces of whole lines that the DKIM body hash and the DATA writer work through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# A run of CRs before an LF is one line end: "line\r\r\n" (a CRLF file sent by a client that
# adds its own CR) must not become an empty line, which would end the header early.
_ANY_LINE_END = re.compile(rb"\r*\n|\r")


def crlf_line_endings(data: bytes) -> bytes:
    """data with every line end (CRLF, bare LF, bare CR, CRs before an LF) as one CRLF.

    Pass-through mail is promised byte-identical; this is the one exception, and only for the
    wire: a next hop that read a bare LF or CR as a line end could otherwise be made to see an
    end of data (`\\n.\\n`) that we did not (SMTP smuggling).
    """
    if crlf_only(data):
        return data  # the usual case, told in three C-speed passes instead of a regex
    return _ANY_LINE_END.sub(b"\r\n", data)


# Each starts with a literal byte, which the regex engine finds at memchr speed and only then
# looks around it: two such searches cost less than the three counts they replaced.
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")


def crlf_only(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether data[start:end] has no line end but CRLF (no copy)."""
    end = len(data) if end is None else end
    if start < end and data[start] == 0x0A:  # the lookbehind would see the CR before `start`
        return False
    return _BARE_CR.search(data, start, end) is None and _BARE_LF.search(data, start, end) is None


def line_pieces(data: bytes, start: int, size: int) -> Iterator[tuple[int, int]]:
    """data[start:] as spans [from, to) of whole CRLF lines, each about `size` bytes: a piece
    runs on to the end of the line it would end in (the last one to the end of data)."""
    position, end = start, len(data)
    while position < end:
        stop = min(end, position + size)
        if stop < end:
            line_end = data.find(b"\r\n", stop - 1)
            stop = end if line_end < 0 else line_end + 2
        yield position, stop
        position = stop
