"""Check on the raw bytes that a message's structure is within limits the parser can survive
(MIME depth and part count, part headers and their MIME fields, header lines and fields),
before it is parsed; and, from the same scan, where the large leaf bodies lie, so that the
parser need not split them into lines (gateway.mime.parse_message, `opaque`).
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
# A MIME header field (RFC 2045: Content-*) with its folded lines; the name as the parser's
# headerRE spells one (printable, no colon), white space before the colon as _CONTENT_TYPE allows
_MIME_FIELD = re.compile(
    rb"^(content-[\x21-\x39\x3b-\x7e]*)[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*",
    re.IGNORECASE | re.MULTILINE,
)
# The MIME fields whose parameters the standard library splits (get_param, get_boundary,
# get_filename, get_content_charset, the generator), by the name a reply shows
_PARAMETER_FIELDS = {b"content-type": "Content-Type", b"content-disposition": "Content-Disposition"}
# A line starting with "--" that the parser does not read as a header field (email.feedparser's
# headerRE: a name of printable characters, then a colon): a part's header section ends there
_DASHES_NOT_A_FIELD = re.compile(rb"^--(?![\x21-\x39\x3b-\x7e]*:)", re.MULTILINE)


@dataclass(frozen=True)
class MimeLimits:
    max_depth: int = MAX_DEPTH
    max_parts: int = 1000
    max_header_line: int = 8192  # bytes in one physical line of the message's header section
    max_header_fields: int = 1000
    # Bytes in one MIME header field of any part, folded lines included. The longest a client
    # writes is a file name: 255 bytes of UTF-8 as RFC 2231 continuations is under 1 KiB.
    max_mime_field: int = 16 * 1024
    # ';' in one Content-Type or Content-Disposition, quoted or not: compat32 rescans the rest
    # of the value for each. Clients write a handful; the longest name in continuations ~30.
    max_mime_params: int = 100

    @classmethod
    def from_settings(cls, smtp: SmtpSettings) -> MimeLimits:
        return cls(smtp.max_mime_depth, smtp.max_mime_parts, smtp.max_header_line,
                   smtp.max_header_fields, smtp.max_mime_field, smtp.max_mime_params)


# Leaf bodies at least this large are handed to the parser whole, not line by line.
OPAQUE_BODY_MIN = 64 * 1024


def check_limits(raw: bytes, limits: MimeLimits) -> tuple[tuple[int, int], ...]:
    """Raise HeaderLimitExceeded or MimeLimitExceeded when `raw` is over `limits`. Otherwise
    the spans [start, end) of the large leaf bodies as the parser will read them: of leaf parts
    directly inside a multipart (the CRLF before the next delimiter belongs to the delimiter),
    holding no line that starts with "--"; or of the message itself when it is a leaf (to the
    end). parse_message may keep them out of its line split."""
    header_end = _header_section_end(raw, 0, len(raw))
    _check_header_section(raw[:header_end], limits)
    scan = _MimeScan(raw, limits)
    scan.run()
    return tuple(scan.opaque)


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
    # tried only where a line starts (after CR, LF or at the start): unanchored, every byte of
    # a long line started a match of its own, time the section's size times its line length
    return re.compile(rb"(?<![^\r\n])[^\r\n]{%d}" % (limit + 1))


def _check_mime_fields(section: bytes, limits: MimeLimits) -> None:
    """Refuse a part whose MIME header fields are over the limits, before any code of the
    standard library reads their parameters: compat32's splitter rescans the rest of the value
    for every ';', quoted or not, in time quadratic in them (CPython gh-136063; 80,000 cost
    seconds, a megabyte minutes, holding the GIL). Measured by regex and bytes.count: linear."""
    for field in _MIME_FIELD.finditer(section):
        name = field.group(1).lower()
        shown = _PARAMETER_FIELDS.get(name) or _field_name(name)
        if field.end() - field.start() > limits.max_mime_field:
            raise MimeLimitExceeded(
                f"a {shown} header field longer than {limits.max_mime_field} bytes")
        semicolons = section.count(b";", field.start(), field.end())
        if name in _PARAMETER_FIELDS and semicolons > limits.max_mime_params:
            raise MimeLimitExceeded(
                f"a {shown} header field with more than {limits.max_mime_params} parameters")


def _field_name(name: bytes) -> str:
    """A field's name as a reply line can carry it: its usual spelling, or short."""
    return name.decode("ascii").title() if len(name) <= 40 else "Content-*"


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
        self._leaf_body: int | None = None  # where the open leaf's body starts, in a multipart
        self.opaque: list[tuple[int, int]] = []

    def run(self) -> None:
        position = self._enter_part(0, "text/plain")
        while self._delimiters is not None:
            found = _next_line_match(self._delimiters, self._raw, position)
            if found is None:
                return  # unclosed multiparts: the parser records a defect, nothing deeper
            self._close_leaf(found.start())
            position = found.end()
            index = self._innermost(found.group(1))
            del self._stack[index + 1:]
            closed = bool(found.group(2))
            if closed:
                del self._stack[index]  # the close delimiter
            # before the next part's headers are read: its delimiters are those still open
            self._delimiters = self._pattern()
            if not closed:
                container = self._stack[index]
                default_type = "message/rfc822" if container.digest else "text/plain"
                # like the feedparser, read delimiter lines that follow at once as one
                repeats = _repeated_delimiters(container.boundary).match(
                    self._raw, self._body_start(position))
                position = self._enter_part(repeats.end(), default_type)

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
            section = self._raw[start:end]
            _check_mime_fields(section, self._limits)  # before the stdlib reads a parameter
            content_type, boundary = _content_type(section, default_type)
            maintype, _, subtype = content_type.partition("/")
            if maintype == "multipart" and boundary is not None:
                self._stack.append(_Container(boundary, subtype == "digest"))
                self._delimiters = self._pattern()
                return start  # no header line is a delimiter: searching from here is safe
            if maintype != "message" or subtype == "delivery-status":
                # a leaf body (message/delivery-status is read as header blocks: not one)
                if maintype != "message" and self._stack and self._stack[-1].boundary:
                    self._leaf_body = body
                elif maintype not in ("message", "multipart") and start == 0:
                    self._note_plain(body, len(self._raw))  # the message itself, to the end
                return start
            self._stack.append(_Container(None))  # an attached message: its headers follow
            start, default_type = body, "text/plain"

    def _close_leaf(self, delimiter: int) -> None:
        """The open leaf's body ends at this delimiter line: note it if it is large and plain."""
        start, self._leaf_body = self._leaf_body, None
        end = delimiter - 2
        if start is not None and self._raw[end:delimiter] == b"\r\n":
            self._note_plain(start, end)

    def _note_plain(self, start: int, end: int) -> None:
        """Note [start, end) if it is large and has no line starting with "--" (so no reading
        of the boundaries can find a delimiter in it)."""
        if (end - start >= OPAQUE_BODY_MIN and not self._raw.startswith(b"--", start)
                and not _has_dashed_line(self._raw, start, end)):
            self.opaque.append((start, end))

    def _part_bounds(self, start: int, stop: int) -> tuple[int, int]:
        """Where a part's headers end and its body starts. The headers end at the empty line,
        or where a line starting with "--" comes first that the parser does not read as a
        header field: a delimiter of an open multipart (a part without the empty line: its
        next delimiter is where its body starts) or a line that is no field at all. A line
        like `--x: y` is a field to the parser, and the part's headers go on after it."""
        end = _header_section_end(self._raw, start, stop)
        dashes = self._dashes_ending_headers(start, end)
        if dashes is not None:
            return dashes, dashes
        if end == stop < len(self._raw):  # no end of the headers inside the window
            raise MimeLimitExceeded(
                f"a MIME part header longer than {_PART_HEADER_WINDOW // 1024} KiB"
            )
        return end, (self._body_start(end) if end < stop else stop)

    def _dashes_ending_headers(self, start: int, end: int) -> int | None:
        """The first line in [start, end) that starts with "--" and ends the headers, or None.
        A line the window cut short is not judged: what ends it decides what it is."""
        if not self._raw.startswith(b"--", start):
            newline = self._raw.find(b"\n--", start, end)
            if newline < 0:
                return None  # the usual case: no such line, and no regular expression run
            start = newline + 1
        found = [_DASHES_NOT_A_FIELD.search(self._raw, start, end)]
        if self._delimiters is not None:
            found.append(self._delimiters.search(self._raw, start, end))
        whole = [line.start() for line in found
                 if line and (self._raw.find(b"\n", line.start(), end) >= 0
                              or end == len(self._raw))]
        return min(whole, default=None)

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


def _next_line_match(
    delimiters: re.Pattern[bytes], raw: bytes, position: int
) -> re.Match[bytes] | None:
    """delimiters.search(raw, position), for a pattern of whole lines that start with "--":
    found by looking only at the lines that hold a "-" (memchr: 0.04 ms for a 2 MB base64
    attachment, where the regex steps through every byte in 8 ms), and by the regex after
    _DASHED_LINES such lines, so text full of dashes costs no more than before."""
    at = position
    for _ in range(_DASHED_LINES):
        dash = raw.find(b"-", at)
        if dash < 0:
            return None
        if dash == 0 or raw[dash - 1] == 0x0A:
            found = delimiters.match(raw, dash)
            if found is not None:
                return found
        line_end = raw.find(b"\n", dash)  # a delimiter starts a line: on to the next one
        if line_end < 0:
            return None
        at = line_end + 1
    return delimiters.search(raw, at)



def _has_dashed_line(raw: bytes, start: int, end: int) -> bool:
    """raw.find(b"\\n--", start, end) >= 0, found by memchr over the first _DASHED_LINES "-"
    (a base64 attachment has none: 0.04 ms instead of 1.5 ms per 2 MB), then by find."""
    at = start
    for _ in range(_DASHED_LINES):
        dash = raw.find(b"-", at, end)
        if dash < 0:
            return False
        if dash > start and raw[dash - 1] == 0x0A and dash + 1 < end and raw[dash + 1] == 0x2D:
            return True
        at = dash + 1
    return raw.find(b"\n--", at, end) >= 0  # the byte before `at` is a "-"


_DASHED_LINES = 32


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
