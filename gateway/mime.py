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
from collections.abc import Iterator
from email import errors
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser

from gateway.errors import UnparseableMessage
from gateway.filenames import decode_base64_leniently

# Deeper trees than this are not walked for attachments (and cannot hit the recursion limit).
MAX_DEPTH = 50

_POLICY = email.policy.compat32
STDLIB_PARSER_CRASHES = (TypeError, AttributeError, IndexError, LookupError)




def parse_message(raw: bytes) -> Message:
    """Parse DATA bytes. Malformed MIME is recorded as defects on the parts; the few inputs on
    which the standard library itself crashes (e.g. `boundary*0=a; boundary*=b`, a CPython
    bug) raise UnparseableMessage so the caller can decide."""
    try:
        return BytesParser(policy=_POLICY).parsebytes(raw)
    except (*STDLIB_PARSER_CRASHES, RecursionError) as error:
        raise UnparseableMessage(f"{type(error).__name__}: {error}") from error


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
    payload = part.get_payload()
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
_PADDING_TAIL = re.compile(rb"=[=\s]*\Z")


def _base64_body(part: Message, raw: bytes) -> bytes:
    """Base64 decoded as clients do, noting what the standard library's decoder would have:
    stray characters (skipped) and a length that leaves a lone character (dropped). Padding
    in the middle does not stop it. Large attachments take the fast path, copying nothing."""
    if raw.translate(None, _BASE64_TEXT):  # what is left is stray (a C loop, not a regex)
        part.defects.append(errors.InvalidBase64CharactersDefect())
    first_padding = raw.find(b"=")
    if first_padding < 0 or _PADDING_TAIL.match(raw, first_padding):
        try:
            return binascii.a2b_base64(raw)  # skips line ends and stray characters itself
        except binascii.Error:
            pass  # a lone last character, or missing padding: the lenient way below
    if len(re.sub(rb"[^A-Za-z0-9+/]", b"", raw)) % 4 == 1:
        part.defects.append(errors.InvalidBase64LengthDefect())
    return decode_base64_leniently(raw)


def decoded_body(part: Message) -> bytes:
    """The body decoded from its transfer encoding as leniently as mail clients do: base64
    with stray characters ignored, quoted-printable, uuencode; any other label as it is."""
    raw = body_bytes(part)
    encoding = transfer_encoding(part)
    if encoding == "base64":
        return _base64_body(part, raw)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(raw)
    if encoding in _UU_ENCODINGS and isinstance(part.get_payload(), str):
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else raw
    return raw
