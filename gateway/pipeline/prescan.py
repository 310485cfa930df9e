"""Recognise, from the raw bytes and without the standard library's parser, a message that is one
plain text part: the one shape whose leaf walk is known in advance (its header section, and its
body decoded), so that the classify stage can look into those two byte strings directly and pass
the message on without parsing it.

Only what is fully understood is recognised; anything else is None, and the message goes the
full way (gateway.pipeline.classify.parse_and_classify). A wrong None costs time; a wrong
PlainText would be a hole, so the rules are narrow: CRLF line ends only; a header section of
well-formed fields in printable ASCII, ended by an empty line; no MIME field but one
Content-Type of text/plain or text/html with a few known parameters (never name or filename),
one Content-Transfer-Encoding of 7bit, 8bit or quoted-printable, and Content-Language. A
multipart, a message/* part, a Content-Disposition or any other Content-* field, base64 or
uuencode as a transfer encoding: all go the full way. What such a part's body and header
section carry (base64 pasted into the text, uuencode, files in a header field) is the content
inspector's to find, on the same bytes the leaf walk would have given it.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from gateway.wire import crlf_only

# a header field's first line: a name as email.feedparser's headerRE reads one (printable, no
# colon, no space), then the colon at once
_FIELD_START = re.compile(rb"[!-9;-~]+:")
# what a header section may hold here: printable ASCII, tab, CRLF (no 8-bit, no control bytes,
# whose readings differ between the parser, clients and us)
_HEADER_TEXT = b"\t\r\n" + bytes(range(0x20, 0x7F))
_TOKEN = rb"[!#-'*+\-.0-9A-Z^-~]+"
_QUOTED = rb'"[^"\\;\r\n]*"'
# text/plain or text/html with the parameters clients write on a body part; no other
_TEXT_TYPE = re.compile(
    rb"[ \t]*text/(?:plain|html)[ \t]*"
    rb"(?:;[ \t]*(?:charset|format|delsp|reply-type)[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED
    + rb")[ \t]*)*;?[ \t]*",
    re.IGNORECASE,
)
_ENCODINGS = frozenset({b"7bit", b"8bit", b"quoted-printable"})
_LANGUAGE = re.compile(rb"[ \t]*[A-Za-z0-9-]+(?:[ \t]*,[ \t]*[A-Za-z0-9-]+)*[ \t]*")


@dataclass(frozen=True)
class PlainText:
    """What the leaf walk of a one-part text message gives the content inspector."""

    header: bytes  # the header section as gateway.mime.header_bytes writes it
    body: bytes  # the body decoded from its transfer encoding, as gateway.mime.decoded_body


def plain_text(raw: bytes) -> PlainText | None:
    """The message's header section and decoded body when it is one plain text part (see the
    module's docstring), else None. Linear in the size of the message."""
    end = raw.find(b"\r\n\r\n")
    if end <= 0:
        return None  # no empty line, or no header section at all
    section = raw[:end]
    if section.translate(None, _HEADER_TEXT):
        return None  # something is left that is not header text
    fields = _fields(section)
    if fields is None:
        return None
    encoding = _mime_fields(fields)
    if encoding is None:
        return None  # decided by the header alone: a large multipart costs nothing more here
    # CRLF only (the frame stage made them so): a bare CR or LF is read differently by readers
    if not crlf_only(raw):
        return None
    body = raw[end + 4:]
    if encoding == b"quoted-printable":
        body = binascii.a2b_qp(body)
    return PlainText(_header_bytes(fields), body)


def _fields(section: bytes) -> list[tuple[bytes, bytes]] | None:
    """(name, rest after the colon, folded lines kept) of each field, or None when a line is
    neither a field nor a continuation of one."""
    fields: list[tuple[bytes, bytes]] = []
    for line in section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return None  # the first line a continuation
            name, rest = fields[-1]
            fields[-1] = (name, rest + b"\r\n" + line)
            continue
        start = _FIELD_START.match(line)
        if start is None:
            return None
        fields.append((line[:start.end() - 1], line[start.end():]))
    return fields


def _mime_fields(fields: list[tuple[bytes, bytes]]) -> bytes | None:
    """The transfer encoding (b"" for none) when the MIME fields make a plain text part."""
    seen: dict[bytes, bytes] = {}
    for name, rest in fields:
        lowered = name.lower()
        if not lowered.startswith(b"content-"):
            continue
        if lowered in seen:
            return None  # which one a reader takes is a choice: not ours to make here
        seen[lowered] = _unfolded(rest)
    if set(seen) - {b"content-type", b"content-transfer-encoding", b"content-language"}:
        return None
    if b"content-type" in seen and not _TEXT_TYPE.fullmatch(seen[b"content-type"]):
        return None
    if b"content-language" in seen and not _LANGUAGE.fullmatch(seen[b"content-language"]):
        return None
    if b"content-transfer-encoding" not in seen:
        return b""
    encoding = seen[b"content-transfer-encoding"].strip(b" \t").lower()
    return encoding if encoding in _ENCODINGS else None


def _unfolded(rest: bytes) -> bytes:
    return rest.replace(b"\r\n", b"")  # a continuation line starts with its white space


def _header_bytes(fields: list[tuple[bytes, bytes]]) -> bytes:
    """The fields as compat32 stores them (email.policy.compat32.header_source_parse: the value
    without the white space after the colon nor the line end) and header_bytes joins them."""
    return b"\r\n".join(name + b": " + rest.lstrip(b" \t").rstrip(b"\r\n")
                        for name, rest in fields)
