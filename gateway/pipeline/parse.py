"""Check on the raw bytes that a message's structure is within limits the parser can survive
(MIME depth and part count, part headers, header lines and fields), before it is parsed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING

from gateway.errors import HeaderLimitExceeded, MimeLimitExceeded
from gateway.mime import MAX_DEPTH, STDLIB_PARSER_CRASHES

if TYPE_CHECKING:
    from gateway.config import SmtpSettings


# --- structure limits, checked on the raw bytes before the parser sees them ---------------
#
# The standard library's parser recurses once per nesting level (a 1000-deep multipart ends in
# RecursionError) and builds an object per part, so the limits are measured by a flat scan that
# finds delimiter lines with one regular expression per change of the open boundaries: linear
# in the size of the message, and the number of Python steps is bounded by the part limit.

_PART_HEADER_WINDOW = 64 * 1024  # a part's Content-Type is looked for this far, no further
_HEADER_END = re.compile(rb"\n\r?\n")
_CONTENT_TYPE = re.compile(
    rb"^content-type[ \t]*:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class MimeLimits:
    max_depth: int = MAX_DEPTH
    max_parts: int = 1000
    max_header_line: int = 8192  # bytes in one physical line of the message's header section
    max_header_fields: int = 1000

    @classmethod
    def from_settings(cls, smtp: SmtpSettings) -> MimeLimits:
        return cls(smtp.max_mime_depth, smtp.max_mime_parts, smtp.max_header_line,
                   smtp.max_header_fields)








def check_limits(raw: bytes, limits: MimeLimits) -> None:
    """Raise HeaderLimitExceeded or MimeLimitExceeded when `raw` is over `limits`."""
    header_end = _header_section_end(raw, 0, len(raw))
    _check_header_section(raw[:header_end], limits)
    _MimeScan(raw, limits).run()


def _header_section_end(raw: bytes, start: int, stop: int) -> int:
    """Index just past the last header line (before the empty line), or `stop`."""
    if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
        return start
    found = _HEADER_END.search(raw, start, stop)
    return found.start() + 1 if found else stop


def _check_header_section(section: bytes, limits: MimeLimits) -> None:
    # counted with bytes.count and one regex search: no list of lines for a 50 MB header
    fields = section.count(b"\n") + 1 - section.count(b"\n ") - section.count(b"\n\t")
    if section.endswith(b"\n"):
        fields -= 1
    if fields > limits.max_header_fields:
        raise HeaderLimitExceeded(f"{fields} header fields, limit {limits.max_header_fields}")
    if _long_line(limits.max_header_line).search(section):
        raise HeaderLimitExceeded(f"header line longer than {limits.max_header_line} bytes")


@functools.lru_cache(maxsize=8)
def _long_line(limit: int) -> re.Pattern[bytes]:
    return re.compile(rb"[^\r\n]{%d}" % (limit + 1))


@dataclass
class _Container:
    boundary: bytes | None  # None: a message/* part, ended only by an enclosing delimiter
    digest: bool = False  # multipart/digest: parts without Content-Type are messages


class _MimeScan:
    """Follows the nesting as the standard library's feedparser does: a delimiter line of any
    open multipart ends every part opened inside it; `--boundary--` closes that multipart."""

    def __init__(self, raw: bytes, limits: MimeLimits):
        self._raw, self._limits = raw, limits
        self._stack: list[_Container] = []
        self._parts = 0
        self._delimiters: re.Pattern[bytes] | None = None

    def run(self) -> None:
        position = self._enter_part(0, "text/plain")
        while self._delimiters is not None:
            found = self._delimiters.search(self._raw, position)
            if found is None:
                return  # unclosed multiparts: the parser records a defect, nothing deeper
            position = found.end()
            index = self._innermost(found.group(1))
            del self._stack[index + 1:]
            if found.group(2):
                del self._stack[index]  # the close delimiter
            else:
                container = self._stack[index]
                default_type = "message/rfc822" if container.digest else "text/plain"
                # like the feedparser, read delimiter lines that follow at once as one
                repeats = _repeated_delimiters(container.boundary).match(
                    self._raw, self._body_start(position))
                position = self._enter_part(repeats.end(), default_type)
            self._delimiters = self._pattern()

    def _enter_part(self, start: int, default_type: str) -> int:
        """Count the part whose headers start at `start` and any message/* inside it."""
        while True:
            self._parts += 1
            if self._parts > self._limits.max_parts:
                raise MimeLimitExceeded(f"more than {self._limits.max_parts} MIME parts")
            if len(self._stack) > self._limits.max_depth:
                raise MimeLimitExceeded(f"MIME nesting deeper than {self._limits.max_depth}")
            # the message's own headers are read whole; a part's only as far as the window,
            # and a part whose headers run past it is refused: what lies below them (its type,
            # its boundary, its parts) would go unseen here while the parser reads it
            window = len(self._raw) if start == 0 else _PART_HEADER_WINDOW
            end, body = self._part_bounds(start, min(len(self._raw), start + window))
            content_type, boundary = _content_type(self._raw[start:end], default_type)
            maintype, _, subtype = content_type.partition("/")
            if maintype == "multipart" and boundary is not None:
                self._stack.append(_Container(boundary, subtype == "digest"))
                self._delimiters = self._pattern()
                return start  # no header line is a delimiter: searching from here is safe
            if maintype != "message" or subtype == "delivery-status":
                return start
            self._stack.append(_Container(None))  # an attached message: its headers follow
            start, default_type = body, "text/plain"

    def _part_bounds(self, start: int, stop: int) -> tuple[int, int]:
        """Where a part's headers end and its body starts. The headers end at the empty line,
        or where a delimiter-like line comes first (a part without the empty line: its next
        delimiter is not one of its headers, and is where its body starts)."""
        if self._raw.startswith(b"--", start):
            return start, start
        end = _header_section_end(self._raw, start, stop)
        delimiter = self._raw.find(b"\n--", start, end)
        if delimiter >= 0:
            return delimiter + 1, delimiter + 1
        if end == stop < len(self._raw):  # no end of the headers inside the window
            raise MimeLimitExceeded(
                f"a MIME part header longer than {_PART_HEADER_WINDOW // 1024} KiB"
            )
        return end, (self._body_start(end) if end < stop else stop)

    def _body_start(self, header_end: int) -> int:
        newline = self._raw.find(b"\n", header_end)
        return len(self._raw) if newline < 0 else newline + 1

    def _innermost(self, boundary: bytes) -> int:
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index].boundary == boundary:
                return index
        raise AssertionError("delimiter pattern matched a boundary that is not open")

    def _pattern(self) -> re.Pattern[bytes] | None:
        boundaries = {c.boundary for c in self._stack if c.boundary is not None}
        if not boundaries:
            return None
        # longest first, so that a boundary that extends another is not read as its close
        alternatives = b"|".join(re.escape(b) for b in sorted(boundaries, key=len, reverse=True))
        return re.compile(rb"^--(" + alternatives + rb")(--)?[ \t]*\r?$", re.MULTILINE)


@functools.lru_cache(maxsize=64)
def _repeated_delimiters(boundary: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?:--" + re.escape(boundary) + rb"(?:--)?[ \t]*\r?\n)*")


def _content_type(section: bytes, default_type: str) -> tuple[str, bytes | None]:
    """(content type, boundary) as the standard library reads them from one header section."""
    header = Message()
    header.set_default_type(default_type)
    found = _CONTENT_TYPE.search(section)
    if found:
        header["Content-Type"] = found.group(1).decode("ascii", "surrogateescape")
    try:
        boundary = header.get_boundary()
        encoded = boundary.encode("ascii", "surrogateescape") if boundary else None
    except STDLIB_PARSER_CRASHES:  # the parser fails on this header too: UnparseableMessage
        encoded = None
    except UnicodeEncodeError:
        # an RFC 2231 boundary that decodes to non-ASCII: the feedparser compares it with lines
        # read as ASCII, so it never matches and the part stays one unparsed body
        encoded = None
    return header.get_content_type(), encoded
