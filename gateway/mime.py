"""A MIME tree: parse the bytes (compat32), walk the parts, address a part by path, and read a
part's body as it arrived and as clients decode it.

We parse with the compat32 policy: it keeps header values as they arrived, so parts we do
not touch serialise back close to their original bytes. Paths are tuples of indices from
the root through each container's payload list (a message/rfc822 part holds one message,
index 0), so a stage can name a part without holding a reference into someone else's tree.
"""

from __future__ import annotations

import binascii
import email.policy
import io
import re
import secrets
from collections.abc import Iterator, Sequence
from email import errors
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser

import pybase64

from gateway.errors import UnparseableMessage
from gateway.filenames import decode_base64_leniently
from gateway.mime_spans import SpanPart, body_view

# Deeper trees than this are not walked for attachments (and cannot hit the recursion limit).
MAX_DEPTH = 50

_POLICY = email.policy.compat32
STDLIB_PARSER_CRASHES = (TypeError, AttributeError, IndexError, LookupError)




def parse_message(raw: bytes, opaque: Sequence[tuple[int, int]] = ()) -> Message:
    """Parse DATA bytes. Malformed MIME is recorded as defects on the parts; the few inputs on
    which the standard library itself crashes (e.g. `boundary*0=a; boundary*=b`, a CPython
    bug) raise UnparseableMessage so the caller can decide.

    `opaque`: spans of leaf bodies (gateway.pipeline.parse.check_limits finds them) that the
    parser need not read. The feedparser splits every body into lines and holds them as
    strings until the part ends: about eight times a large attachment's size at its peak.
    Each span is replaced by a token, the rest is parsed, and each token must come back as
    the whole body of one part, which then keeps its span as its body (mime_spans.SpanPart:
    read as the string the parser would have made, without holding a copy). If any does not, the message is parsed again whole: the tree is the same
    either way, only the memory differs."""
    if opaque:
        tree = _parse_around(raw, opaque)
        if tree is not None:
            return tree
    return _parse(raw)


def _parse(raw: bytes, part_class: type[Message] = Message) -> Message:
    try:
        return BytesParser(part_class, policy=_POLICY).parsebytes(raw)
    except (*STDLIB_PARSER_CRASHES, RecursionError) as error:
        raise UnparseableMessage(f"{type(error).__name__}: {error}") from error


def _parse_around(raw: bytes, opaque: Sequence[tuple[int, int]]) -> Message | None:
    prefix = f"ppap-gateway-body-{secrets.token_hex(16)}-"
    pieces: list[bytes | memoryview] = []
    view, position = memoryview(raw), 0
    for index, (start, end) in enumerate(opaque):
        pieces += [view[position:start], f"{prefix}{index}".encode("ascii")]
        position = end
    pieces.append(view[position:])
    tree = _parse(b"".join(pieces), SpanPart)
    in_multipart = {id(kid) for part in tree.walk() if part.get_content_maintype() == "multipart"
                    for kid in children(part)}
    found: dict[int, Message] = {}
    for part in tree.walk():
        payload = payload_of(part)
        if not isinstance(payload, str) or prefix not in payload:
            continue
        index = payload[len(prefix):] if payload.startswith(prefix) else ""
        # a token must be the whole body of a leaf that a multipart holds, or of the message,
        # once: anywhere else (inside a longer body, in a message/* part the parser reads as
        # fields), the parser read the bytes differently from the scan
        if (not index.isdigit() or int(index) in found or int(index) >= len(opaque)
                or (id(part) not in in_multipart and part is not tree)
                or part.get_content_maintype() in ("message", "multipart")):
            return None
        found[int(index)] = part
    if len(found) != len(opaque):
        return None
    for index, part in found.items():
        part.keep_span(raw, *opaque[index])  # no copy: read from the received bytes
    return tree


def payload_of(part: Message) -> object:
    """The payload as the parser stored it: for a body, the received bytes as a str (8-bit
    bytes as surrogates, which text_bytes turns back into those bytes). Not get_payload():
    it encodes the whole body on every call to look for surrogates (a transient copy of a
    large attachment), and for a body that has them it returns the text decoded by the part's
    charset with replacement characters, bytes no client ever sees."""
    return part._payload  # noqa: SLF001 - compat32's one payload attribute


def children(part: Message) -> list[Message]:
    """The sub-parts of a multipart or message/* part, else an empty list."""
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def walk_with_paths(
    root: Message, max_depth: int = MAX_DEPTH
) -> Iterator[tuple[tuple[int, ...], Message]]:
    """Yield (path, part) depth-first, root first, without recursion."""
    stack: list[tuple[tuple[int, ...], Message]] = [((), root)]
    while stack:
        path, part = stack.pop()
        yield path, part
        if len(path) >= max_depth:
            continue
        kids = children(part)
        for index in range(len(kids) - 1, -1, -1):
            stack.append((path + (index,), kids[index]))


def part_at(root: Message, path: tuple[int, ...]) -> Message:
    part = root
    for index in path:
        part = children(part)[index]
    return part


# --- a part's body, as it arrived and as clients decode it --------------------------------

IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})
_UU_ENCODINGS = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_BODY_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=None)


def transfer_encoding(part: Message) -> str:
    """The Content-Transfer-Encoding as lenient clients read it: ' BASE64 ', '"base64"' and
    'base64; x' all name base64; no header is ''."""
    value = str(part.get("content-transfer-encoding", "")).strip().strip('"').lower()
    words = value.replace(";", " ").split()
    return words[0] if words else ""


def body_bytes(part: Message) -> bytes:
    """The part's body before transfer decoding. A multipart or message/* part that the parser
    opened is written back (CRLF) without its own header, so nothing it holds is lost."""
    view = body_view(part)
    if view is not None:
        return bytes(view)
    payload = payload_of(part)
    if isinstance(payload, str):
        return text_bytes(payload)
    if isinstance(payload, bytes):
        return payload
    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=_BODY_POLICY).flatten(part)
    whole = buffer.getvalue()
    end = whole.find(b"\r\n\r\n")
    return whole[end + 4:] if end >= 0 else whole


def header_bytes(part: Message) -> bytes:
    """The part's header section as text, one field a line (folding kept)."""
    return b"\r\n".join(
        text_bytes(f"{name}: {value}") for name, value in part.items()
    )


def text_bytes(text: str) -> bytes:
    """compat32 hands bodies over as str holding the raw bytes (8-bit ones as surrogates);
    anything wider came from a decoded header and is taken as UTF-8."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n\t\x0b\x0c "
_STRAY_IN_BASE64 = re.compile(r"[^A-Za-z0-9+/=\r\n\t\x0b\x0c ]")
_PADDING_TAIL = re.compile(rb"=[=\s]*\Z")
_PADDING_TAIL_TEXT = re.compile(r"=[=\s]*\Z")


def _base64_body(part: Message, raw: bytes) -> bytes:
    """Base64 decoded as clients do, noting what the standard library's decoder would have:
    stray characters (skipped) and a length that leaves a lone character (dropped). Padding
    in the middle does not stop it. Large attachments take the fast path, copying nothing."""
    stray = bool(raw.translate(None, _BASE64_TEXT))  # what is left is stray (a C loop)
    if stray:
        part.defects.append(errors.InvalidBase64CharactersDefect())
    first_padding = raw.find(b"=")
    if first_padding < 0 or _PADDING_TAIL.match(raw, first_padding):
        try:
            return _decode_clean_base64(raw, stray)
        except binascii.Error:
            pass  # a lone last character, or missing padding: the lenient way below
    return _lenient_base64(part, raw)


def _decode_clean_base64(text: str | bytes | memoryview, stray: bool) -> bytes:
    """Base64 whose '=' are all at its end: binascii skips line ends and stray characters
    itself; without stray ones, pybase64 (SIMD) decodes the same bytes, or fails alike, six
    times faster (tests/unit/test_mime_base64.py compares the two)."""
    return binascii.a2b_base64(text) if stray else pybase64.b64decode(text)


def _base64_text(part: Message, text: str | memoryview) -> bytes:
    """_base64_body for an ASCII str payload or a body kept as a span, decoded from it as it
    is: a large attachment is not first copied into bytes (binascii reads both)."""
    if isinstance(text, str):
        stray, padding = _STRAY_IN_BASE64.search(text) is not None, _PADDING_TAIL_TEXT
    else:
        stray, padding = _stray_in_span(text), _PADDING_TAIL
    if stray:
        part.defects.append(errors.InvalidBase64CharactersDefect())
    first_padding = _first_equals(text)
    if first_padding < 0 or padding.match(text, first_padding):
        try:
            return _decode_clean_base64(text, stray)
        except binascii.Error:
            pass
    return _lenient_base64(part, text.encode("ascii") if isinstance(text, str) else bytes(text))


_SPAN_PIECE = 256 * 1024  # a span is read a piece at a time: C loops, a bounded copy


def _stray_in_span(view: memoryview) -> bool:
    return any(bytes(view[at:at + _SPAN_PIECE]).translate(None, _BASE64_TEXT)
               for at in range(0, len(view), _SPAN_PIECE))


def _first_equals(text: str | memoryview) -> int:
    if isinstance(text, str):
        return text.find("=")
    for at in range(0, len(text), _SPAN_PIECE):
        found = bytes(text[at:at + _SPAN_PIECE]).find(b"=")
        if found >= 0:
            return at + found
    return -1


def _lenient_base64(part: Message, raw: bytes) -> bytes:
    if len(re.sub(rb"[^A-Za-z0-9+/]", b"", raw)) % 4 == 1:
        part.defects.append(errors.InvalidBase64LengthDefect())
    return decode_base64_leniently(raw)


def padding_mid_way(part: Message) -> bool:
    """Base64 with '=' before its end: decoders differ on what follows the padding."""
    if transfer_encoding(part) != "base64":
        return False
    view = body_view(part)
    payload = view if view is not None else payload_of(part)
    if not isinstance(payload, (str, memoryview)):
        return False
    # as payload.rstrip().rstrip("="), without copying a large body twice
    end = len(payload)
    while end and _is_space(payload[end - 1]):
        end -= 1
    while end and payload[end - 1] in ("=", 0x3D):
        end -= 1
    return 0 <= _first_equals(payload) < end


def _is_space(char: str | int) -> bool:
    """str.isspace() of a character, or of the one a byte is in a compat32 body (8-bit bytes
    are surrogates there, never space)."""
    return char.isspace() if isinstance(char, str) else char < 0x80 and chr(char).isspace()


def decoded_body(part: Message) -> bytes:
    """The body decoded from its transfer encoding as leniently as mail clients do: base64
    with stray characters ignored, quoted-printable, uuencode; any other label as it is."""
    encoding = transfer_encoding(part)
    view = body_view(part)
    if view is not None and encoding == "base64":
        return _base64_text(part, view)  # decoded from the received bytes themselves
    payload = payload_of(part)
    if encoding == "base64" and isinstance(payload, str) and payload.isascii():
        return _base64_text(part, payload)
    raw = body_bytes(part)
    if encoding == "base64":
        return _base64_body(part, raw)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(raw)
    if encoding in _UU_ENCODINGS and isinstance(payload, str):
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else raw
    return raw
