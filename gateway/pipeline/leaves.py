"""Walk a parsed message down to the parts that carry content, the way a recipient's client
opens them, and say what each one is.

Every leaf comes decoded from its transfer encoding. Wrappers the parser could not open as a
client would (a message/* part in base64 or quoted-printable, delivery reports, multiparts
without a usable boundary) are leaves too: their bytes get inspected like any file. S/MIME and
PGP/MIME shells count only when genuine: a `multipart/signed` whose signature part parses as
PKCS#7 or OpenPGP, an `application/pkcs7-mime` that is real CMS, a `multipart/encrypted` that
holds a real OpenPGP message. A fake shell is an ordinary multipart or file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from gateway.containers.shells import is_detached_pkcs7_signature, read_cms, read_pgp
from gateway.errors import MimeLimitExceeded
from gateway.mime import (
    IDENTITY_ENCODINGS,
    body_bytes,
    children,
    decoded_body,
    header_bytes,
    padding_mid_way,
    text_bytes,
    transfer_encoding,
)

_PKCS7_MIME = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_PKCS7_SIGNATURE = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
# message/* subtypes whose body the parser does not open as one message a client would show
# shorter header sections cannot hold the smallest encrypted archive a reader opens (some
# hundred bytes, as base64)
HEADER_WORTH_A_LOOK = 128
_OPAQUE_MESSAGE_TYPES = frozenset({"delivery-status", "partial", "external-body",
                                   "disposition-notification", "feedback-report"})


class LeafKind(enum.Enum):
    CONTENT = "content"  # bytes to inspect for files
    OPAQUE = "opaque"  # genuinely encrypted to a recipient's key: cannot be inspected
    SEALED = "sealed"  # genuinely encrypted with a password only: PPAP by other means
    FRAGMENT = "fragment"  # message/partial: a piece of a message, never whole here
    OUTSIDE = "outside"  # a header, preamble, epilogue or genuine signature: no file to remove


@dataclass(frozen=True)
class Leaf:
    path: tuple[int, ...]  # where the part is in the tree (for OUTSIDE: its multipart)
    part: Message
    kind: LeafKind
    data: bytes = b""  # CONTENT and OUTSIDE: the decoded bytes
    # CONTENT: raw text worth reading apart from `data` (base64 whose padding sits mid-way:
    # clients disagree on whether data follows it)
    also_raw: bytes = b""
    inside_signed: bool = False  # a genuine signature covers it: changing it breaks that
    inside_rfc822: bool = False  # part of an attached message
    where: str = ""  # OUTSIDE: "header", "preamble", "epilogue" or "signature"


def walk_leaves(root: Message, *, max_depth: int, max_parts: int,
                max_output: int) -> Iterator[Leaf]:
    """Every leaf under root, depth-first in document order. A tree deeper or wider than the
    limits raises MimeLimitExceeded: what is not walked would not be inspected."""
    stack: list[Leaf | tuple[tuple[int, ...], Message, bool, bool]] = [((), root, False, False)]
    seen = 0
    while stack:
        item = stack.pop()
        if isinstance(item, Leaf):
            yield item
            continue
        path, part, signed, in_message = item
        seen += 1
        if seen > max_parts:
            raise MimeLimitExceeded(f"more than {max_parts} MIME parts")
        if len(path) > max_depth:
            raise MimeLimitExceeded(f"MIME nesting deeper than {max_depth}")
        yield from _outside_text(path, part, signed, in_message)
        found = _opened(path, part, signed, in_message, max_output)
        if isinstance(found, Leaf):
            yield found
            continue
        stack.extend(reversed(found))


def _opened(path, part: Message, signed: bool, in_message: bool,
            max_output: int) -> Leaf | list[Leaf | tuple[tuple[int, ...], Message, bool, bool]]:
    """The part as one leaf, or what to walk next: sub-parts (with what covers them), and
    leaves already known."""
    content_type = part.get_content_type()
    maintype, _, subtype = content_type.partition("/")
    kids = children(part)
    if not part.is_multipart() or not kids:
        return _leaf(path, part, signed, in_message, max_output)
    if maintype == "message":
        if subtype == "partial":
            return Leaf(path, part, LeafKind.FRAGMENT, inside_signed=signed,
                        inside_rfc822=in_message)
        if transfer_encoding(part) not in IDENTITY_ENCODINGS or subtype in _OPAQUE_MESSAGE_TYPES:
            # what the parser read as a message is encoded text (or a report): as a client
            # sees it, it is a file to decode and look into
            return _content(path, part, decoded_body(part), b"", signed, in_message)
        return [(path + (index,), kid, signed, True) for index, kid in enumerate(kids)]
    if content_type == "multipart/signed" and len(kids) == 2 and _genuine_signature(kids[1]):
        # what the signature covers is walked as usual; the signature's own bytes are looked
        # at too (its certificates and attributes can carry any octets), but they are no file
        signature = Leaf(path + (1,), kids[1], LeafKind.OUTSIDE, decoded_body(kids[1]),
                         inside_signed=True, inside_rfc822=in_message, where="signature")
        return [signature, (path + (0,), kids[0], True, in_message)]
    if content_type == "multipart/encrypted" and len(kids) == 2:
        sealed = read_pgp(decoded_body(kids[1]))
        if sealed is not None and sealed.kind == "encrypted":
            kind = LeafKind.SEALED if sealed.password_only else LeafKind.OPAQUE
            # the control part beside it is walked like any part: it must hold no file either
            return [(path + (0,), kids[0], signed, in_message),
                    Leaf(path + (1,), kids[1], kind, inside_signed=signed,
                         inside_rfc822=in_message)]
    return [(path + (index,), kid, signed, in_message) for index, kid in enumerate(kids)]


def _leaf(path, part: Message, signed: bool, in_message: bool, max_output: int) -> Leaf:
    content_type = part.get_content_type()
    if content_type == "message/partial":
        return Leaf(path, part, LeafKind.FRAGMENT, inside_signed=signed, inside_rfc822=in_message)
    data = decoded_body(part)
    if content_type in _PKCS7_MIME:
        cms = read_cms(data, max_output=max_output)
        if cms is not None and cms.kind in ("enveloped-data", "authenticated-enveloped-data"):
            kind = LeafKind.SEALED if cms.password_only else LeafKind.OPAQUE
            return Leaf(path, part, kind, inside_signed=signed, inside_rfc822=in_message)
        if cms is not None and cms.content is not None:
            # opaque signing or compression: the MIME entity inside is what a client shows
            covered = signed or cms.kind == "signed-data"
            return _content(path, part, cms.content, b"", covered, in_message)
    raw = body_bytes(part) if padding_mid_way(part) else b""
    return _content(path, part, data, raw, signed, in_message)


def _content(path, part, data: bytes, raw: bytes, signed: bool, in_message: bool) -> Leaf:
    return Leaf(path, part, LeafKind.CONTENT, data, raw, signed, in_message)


def _genuine_signature(part: Message) -> bool:
    if part.is_multipart():
        return False
    data = decoded_body(part)
    content_type = part.get_content_type()
    if content_type in _PKCS7_SIGNATURE:
        return is_detached_pkcs7_signature(data)
    if content_type == "application/pgp-signature":
        found = read_pgp(data)
        return found is not None and found.kind == "signature"
    return False


def _outside_text(path, part: Message, signed: bool, in_message: bool) -> Iterator[Leaf]:
    """Text that travels outside any part's body: a long header section (where a line end
    read differently can fold a body in), a multipart's preamble and epilogue."""
    header = header_bytes(part)
    if len(header) >= HEADER_WORTH_A_LOOK:
        yield Leaf(path, part, LeafKind.OUTSIDE, header, b"", signed, in_message, "header")
    if part.get_content_maintype() != "multipart":
        return
    for where, text in (("preamble", part.preamble), ("epilogue", part.epilogue)):
        if text and len(text.strip()) >= 16:
            yield Leaf(path, part, LeafKind.OUTSIDE, text_bytes(text), b"", signed, in_message,
                       where)
