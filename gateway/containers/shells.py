"""Whether the bytes of a signature or encrypted MIME part are a genuine S/MIME (CMS) or
OpenPGP structure, and of which kind; a fake one (any bytes under the right content type)
gets None, so it earns the mail none of the leniency a real signature or encryption gets.

Only structure is checked, never a signature or key: CMS must parse completely with
asn1crypto, OpenPGP must be well-formed armor (checksum, if present, matching) around a
sequence of packet headers that fills the data exactly. Nothing is decrypted; the one
thing unpacked is CMS compressed-data, bounded by max_output. Every loop is bounded by the
data, and nothing here raises on hostile input except InspectionLimit for compressed-data
that expands past max_output.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass

from asn1crypto import cms, core

from gateway.containers.base import InspectionLimit


@dataclass(frozen=True)
class CmsReport:
    kind: str  # "signed-data" | "enveloped-data" | "authenticated-enveloped-data" | "compressed-data"
    # signed-data: the encapsulated content (opaque signing), None when detached;
    # compressed-data: the decompressed content; otherwise None
    content: bytes | None
    password_only: bool  # (authenticated-)enveloped-data whose every recipient is a password (pwri)


@dataclass(frozen=True)
class PgpReport:
    kind: str  # "signature" | "encrypted"
    password_only: bool  # encrypted with symmetric-key (SKESK) session keys only, no public-key ones


_CMS_KINDS = {
    "signed_data": "signed-data",
    "enveloped_data": "enveloped-data",
    "authenticated_enveloped_data": "authenticated-enveloped-data",
    "compressed_data": "compressed-data",
}
_CMS_PEM = re.compile(rb"-----BEGIN (PKCS7|CMS)-----(.*)-----END \1-----", re.S)
_DER_SEQUENCE = 0x30

# OpenPGP packet tags (RFC 9580 section 5)
_PKESK, _SIGNATURE, _SKESK = 1, 2, 3
_SESSION_KEY_PACKETS = frozenset({_PKESK, _SKESK})
_ENCRYPTED_DATA_PACKETS = frozenset({9, 18, 20})  # SED, SEIPD, OCB-encrypted (LibrePGP)
_PARTIAL_LENGTH_PACKETS = frozenset({8, 9, 11, 18, 20})  # data packets may be streamed in chunks
# the first body octet of these packets is a version number; any other value is no such packet
_PACKET_VERSIONS = {_PKESK: {3, 6}, _SIGNATURE: {3, 4, 5, 6}, _SKESK: {4, 5, 6}, 18: {1, 2}, 20: {1}}
_MAX_PACKETS = 10_000
_Body = tuple[int | None, int]  # a packet body's first octet (None if empty) and where it ends

_ARMOR_BEGIN = re.compile(rb"-----BEGIN PGP (SIGNATURE|MESSAGE)-----")
_ARMOR_KINDS = {b"SIGNATURE": "signature", b"MESSAGE": "encrypted"}
_ARMOR_HEADER = re.compile(rb"[\x21-\x39\x3b-\x7e]+: .*")  # "Version: ...", "Comment: ..."
_ARMOR_CHECKSUM = re.compile(rb"=([A-Za-z0-9+/]{4})")
_ARMOR_LINE_END = b" \t\r"


def read_cms(data: bytes, *, max_output: int) -> CmsReport | None:
    """The CMS structure data holds (DER, or PEM or base64 of it), or None if it is none of
    the four kinds or does not parse completely."""
    info = _content_info(data)
    if info is None:
        return None
    kind = _CMS_KINDS.get(info["content_type"].native)
    content = info["content"]
    if kind is None or isinstance(content, core.Void):
        return None
    if kind == "signed-data":
        return _signed_report(content)
    if kind == "compressed-data":
        return _compressed_report(content, max_output)
    return _enveloped_report(kind, content)


def is_detached_pkcs7_signature(data: bytes) -> bool:
    """Whether data is what the second part of an S/MIME multipart/signed must be: signed-data
    with at least one signer and no encapsulated content of its own."""
    info = _content_info(data)
    if info is None or info["content_type"].native != "signed_data":
        return False
    report = _signed_report(info["content"])
    return report is not None and not report.content


def may_report(data: bytes) -> bool:
    """Whether read_pgp or read_cms could report anything on data: OpenPGP packets (armored
    or not) that fill it, or a CMS ContentInfo that parses. Nothing is unpacked, so noise
    that merely starts like a packet or a SEQUENCE is told apart cheaply."""
    return read_pgp(data) is not None or _content_info(data) is not None


def read_pgp(data: bytes) -> PgpReport | None:
    """The OpenPGP structure data holds (armored or binary): signature packets only, or
    session-key packets followed by one encrypted data packet. None for anything else."""
    text = data.strip()
    if not text.startswith(b"-----BEGIN PGP "):
        return _classify_packets(data)
    armored = _dearmor(text)
    if armored is None:
        return None
    label_kind, packets = armored
    report = _classify_packets(packets)
    if report is None or report.kind != label_kind:
        return None
    return report


# --- CMS ---


def _content_info(data: bytes) -> cms.ContentInfo | None:
    der = _der(data)
    if der is None:
        return None
    # asn1crypto parses lazily and raises whatever the bytes provoke (ValueError, TypeError,
    # KeyError, RecursionError on deep nesting ...): .native parses every field now, and any
    # failure means the bytes are not a CMS structure.
    try:
        info = cms.ContentInfo.load(der, strict=True)
        info.native
    except Exception:
        return None
    return info


def _der(data: bytes) -> bytes | None:
    """data itself if it looks like DER; else the DER inside PEM armor or plain base64."""
    if data[:1] == bytes([_DER_SEQUENCE]):
        return data
    text = data.strip()
    pem = _CMS_PEM.fullmatch(text)
    encoded = b"".join((pem.group(2) if pem else text).split())
    try:
        der = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None
    return der if der[:1] == bytes([_DER_SEQUENCE]) else None


def _signed_report(signed: cms.SignedData) -> CmsReport | None:
    if len(signed["signer_infos"]) == 0:
        return None
    return CmsReport("signed-data", _encapsulated_content(signed["encap_content_info"]), False)


def _compressed_report(compressed: cms.CompressedData, max_output: int) -> CmsReport | None:
    packed = _encapsulated_content(compressed["encap_content_info"])
    if compressed["compression_algorithm"]["algorithm"].native != "zlib" or packed is None:
        return None
    content = _inflate(packed, max_output)
    return None if content is None else CmsReport("compressed-data", content, False)


def _enveloped_report(kind: str, envelope: cms.EnvelopedData) -> CmsReport | None:
    """Also for AuthEnvelopedData, whose recipient_infos are the same."""
    recipients = list(envelope["recipient_infos"])
    if not recipients:  # CMS requires at least one; without, "every recipient" would be vacuous
        return None
    password_only = all(recipient.name == "pwri" for recipient in recipients)
    return CmsReport(kind, None, password_only)


def _encapsulated_content(encapsulated: cms.EncapsulatedContentInfo) -> bytes | None:
    content = encapsulated["content"]
    if isinstance(content, core.Void):
        return None
    # the raw octets (BER chunks joined), even where asn1crypto parsed them as nested CMS
    return bytes(content)


def _inflate(packed: bytes, max_output: int) -> bytes | None:
    """The zlib stream packed, whole and with nothing after it, expanded to at most max_output bytes."""
    inflater = zlib.decompressobj()
    try:
        content = inflater.decompress(packed, max(max_output, 0) + 1)
    except zlib.error:
        return None
    if len(content) > max_output:
        raise InspectionLimit(f"S/MIME compressed content expands to more than {max_output} bytes")
    if not inflater.eof or inflater.unused_data:
        return None
    return content


# --- OpenPGP ---


def _dearmor(text: bytes) -> tuple[str, bytes] | None:
    """The kind the armor's label promises and the packets it carries (RFC 9580 section 6)."""
    lines = [line.rstrip(_ARMOR_LINE_END) for line in text.split(b"\n")]
    begin = _ARMOR_BEGIN.fullmatch(lines[0])
    if begin is None or len(lines) < 3 or lines[-1] != b"-----END PGP " + begin.group(1) + b"-----":
        return None
    body = lines[1:-1]
    start = 0
    while start < len(body) and _ARMOR_HEADER.fullmatch(body[start]):
        start += 1
    if start < len(body) and not body[start]:  # the blank line after the armor headers
        start += 1
    body = body[start:]
    checksum = None
    if body and body[-1].startswith(b"="):
        footer = _ARMOR_CHECKSUM.fullmatch(body[-1])
        if footer is None:
            return None
        checksum = int.from_bytes(base64.b64decode(footer.group(1)), "big")
        body = body[:-1]
    try:
        packets = base64.b64decode(b"".join(body), validate=True)
    except binascii.Error:
        return None
    if checksum is not None and _crc24(packets) != checksum:
        return None
    return _ARMOR_KINDS[begin.group(1)], packets


def _crc24_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
        table.append(crc & 0xFFFFFF)
    return tuple(table)


_CRC24_TABLE = _crc24_table()


def _crc24(data: bytes) -> int:
    """The armor checksum (RFC 9580 section 6.1)."""
    crc = 0xB704CE
    table = _CRC24_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ byte]
    return crc


def _classify_packets(data: bytes) -> PgpReport | None:
    tags = _packet_tags(data)
    if not tags:
        return None
    if all(tag == _SIGNATURE for tag in tags):
        return PgpReport("signature", False)
    session_keys, last = tags[:-1], tags[-1]
    if not session_keys or last not in _ENCRYPTED_DATA_PACKETS:
        return None
    if not all(tag in _SESSION_KEY_PACKETS for tag in session_keys):
        return None
    return PgpReport("encrypted", all(tag == _SKESK for tag in session_keys))


def _packet_tags(data: bytes) -> list[int] | None:
    """The tag of every packet in data, or None unless the packets fill it exactly."""
    tags: list[int] = []
    position = 0
    while position < len(data):  # each packet takes at least its header octet
        if len(tags) == _MAX_PACKETS:
            return None
        packet = _read_packet(data, position)
        if packet is None:
            return None
        tag, position = packet
        tags.append(tag)
    return tags


def _read_packet(data: bytes, start: int) -> tuple[int, int] | None:
    """The tag of the packet at start and where the next one begins (RFC 9580 section 4.2)."""
    header = data[start]
    if not header & 0x80:
        return None
    if header & 0x40:
        tag = header & 0x3F
        body = _new_format_body(data, start + 1, tag)
    else:
        tag = (header >> 2) & 0x0F
        body = _old_format_body(data, start + 1, tag, header & 0x03)
    if tag == 0 or body is None:
        return None
    first_octet, end = body
    if tag in _PACKET_VERSIONS and first_octet not in _PACKET_VERSIONS[tag]:
        return None
    return tag, end


def _old_format_body(data: bytes, position: int, tag: int, length_type: int) -> _Body | None:
    """The body of an old-format packet, whose header octet gives the size of its length field."""
    if length_type == 3:  # indeterminate: the packet runs to the end of the data
        if tag not in _PARTIAL_LENGTH_PACKETS:
            return None
        return _body_span(data, position, len(data))
    length_size = (1, 2, 4)[length_type]
    if position + length_size > len(data):
        return None
    body_start = position + length_size
    return _body_span(data, body_start, body_start + int.from_bytes(data[position:body_start], "big"))


def _new_format_body(data: bytes, position: int, tag: int) -> _Body | None:
    """Follows partial body lengths from chunk to chunk."""
    first_octet = None
    first_chunk = True
    while position < len(data):  # each chunk takes at least its length octet
        length = _new_format_length(data, position)
        if length is None:
            return None
        header_size, body_size, partial = length
        span = _body_span(data, position + header_size, position + header_size + body_size)
        if span is None:
            return None
        if first_chunk:
            first_octet, first_chunk = span[0], False
        position = span[1]
        if not partial:
            return first_octet, position
        if tag not in _PARTIAL_LENGTH_PACKETS:
            return None
    return None


def _new_format_length(data: bytes, position: int) -> tuple[int, int, bool] | None:
    """Size of the length field, the body (chunk) length it gives, and whether more chunks follow."""
    first = data[position]
    if first < 192:
        return 1, first, False
    if first < 224:
        if position + 2 > len(data):
            return None
        return 2, ((first - 192) << 8) + data[position + 1] + 192, False
    if first < 255:
        return 1, 1 << (first & 0x1F), True
    if position + 5 > len(data):
        return None
    return 5, int.from_bytes(data[position + 1 : position + 5], "big"), False


def _body_span(data: bytes, start: int, end: int) -> _Body | None:
    if end > len(data):
        return None
    return (data[start] if end > start else None), end
