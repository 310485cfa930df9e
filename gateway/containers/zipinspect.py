"""Tell from an attachment's bytes alone whether it is a ZIP and whether any member is encrypted.

Only headers are read: nothing is decompressed or decrypted. Every claimed size, offset and
count is checked against the bytes actually present before it is used, and no allocation
follows a claimed size, so hostile input costs time and memory linear in its length.
An archive that two readers could read differently (local and central headers disagreeing,
entries overlapping, records out of place) is unreadable: gateway.unlock.extract refuses
whatever this module does not read cleanly, so the two always agree.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from gateway.filenames import clean_text
from gateway.model import ZipMember, ZipReport, ZipVerdict

LOCAL_SIGNATURE = b"PK\x03\x04"
CENTRAL_SIGNATURE = b"PK\x01\x02"
EOCD_SIGNATURE = b"PK\x05\x06"
ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
SPANNED_SIGNATURE = b"PK\x07\x08"

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
_MAX_COMMENT = 0xFFFF

FLAG_ENCRYPTED = 0x0001
FLAG_DATA_DESCRIPTOR = 0x0008
FLAG_STRONG_ENCRYPTION = 0x0040
FLAG_UTF8_NAME = 0x0800
METHOD_AES = 99
EXTRA_ZIP64 = 0x0001
EXTRA_UNICODE_PATH = 0x7075
EXTRA_AES = 0x9901

# Methods APPNOTE defines; a local header claiming another is taken for noise when salvaging.
_KNOWN_METHODS = frozenset(
    {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 14, 16, 18, 19, 20, 93, 94, 95, 96, 97, 98, 99}
)
_FIELDS_READ = frozenset({EXTRA_ZIP64, EXTRA_UNICODE_PATH})
# Real archivers write a handful of extra fields; reading only the first few keeps the work per
# entry constant even when many central entries point at one header with a 64 KiB extra block.
_MAX_EXTRA_FIELDS = 16
_MAX_NAME_CHARS = 1024
# APPNOTE 6.3 (LZMA, PPMd, AES); zipfile and pyzipper refuse entries that need more
_NEWEST_VERSION_NEEDED = 63


class _Unreadable(Exception):
    """The ZIP structure contradicts itself; the message is the reason logged."""


class _Directory(NamedTuple):
    """Where the central directory's entries lie, and how far the archive is shifted."""

    start: int
    count: int
    size: int
    end: int
    shift: int  # bytes before the archive's own offset 0 (self-extractor stubs, concatenation)


class _Span(NamedTuple):
    """Where one member lies in the data: its local header start and the end of its data."""

    start: int
    end: int


class _LocalClaims(NamedTuple):
    """What a central entry says its local header must repeat."""

    name: bytes
    flags: int
    method: int
    compressed: int
    uncompressed: int


class _EncryptionSignals(NamedTuple):
    """What one header (central or local) says that bears on encryption."""

    flags: int
    method: int
    aes_extra: bool


def inspect_zip(data: bytes, *, max_members: int = 65535) -> ZipReport:
    """Classify data as not a ZIP, a plain ZIP, an encrypted ZIP or a corrupt ZIP.

    `data` is read only by len, slices, find and rfind, so a stored blob read in place
    (gateway.store.blobs.BlobView) works as well as bytes."""
    looks_like_zip = data[:4] in (LOCAL_SIGNATURE, EOCD_SIGNATURE, SPANNED_SIGNATURE)
    # Without a ZIP signature at offset 0 only an EOCD ending exactly at the end counts:
    # a stray "PK\5\6" inside a PDF should not make it a corrupt ZIP.
    eocd = _find_eocd(data, exact_end_only=not looks_like_zip)
    if eocd is None:
        if not looks_like_zip:
            return ZipReport(ZipVerdict.NOT_ZIP)
        return _salvage(data, "no end of central directory record", [], max_members)
    members: list[ZipMember] = []
    spans: list[_Span] = []
    try:
        directory = _locate_directory(data, eocd, max_members)
        for member, span in _central_directory_members(data, directory):
            members.append(member)
            spans.append(span)
        _check_spans(spans, directory.start)
    except _Unreadable as problem:
        return _salvage(data, str(problem), members, max_members)
    if directory.shift and data[:4] == LOCAL_SIGNATURE:
        # entries before the archive's start: another ZIP concatenated in front, which a
        # reader of the last central directory would not list but a user could still cut out
        members.extend(_scan_local_headers(data, max_members, end=directory.shift))
    if any(member.encrypted for member in members):
        return ZipReport(ZipVerdict.ENCRYPTED_ZIP, tuple(members))
    return ZipReport(ZipVerdict.PLAIN_ZIP, tuple(members))


def _find_eocd(data: bytes, exact_end_only: bool) -> int | None:
    """Offset of the last EOCD whose comment ends the data (else, if allowed, fits in it)."""
    if len(data) < _EOCD.size:
        return None
    floor = max(0, len(data) - _EOCD.size - _MAX_COMMENT)
    search_end = len(data) - _EOCD.size + len(EOCD_SIGNATURE)
    fits_inside: int | None = None
    while True:  # each rfind scans only below the previous hit: linear in the window
        position = data.rfind(EOCD_SIGNATURE, floor, search_end)
        if position < 0:
            return None if exact_end_only else fits_inside
        (comment_length,) = struct.unpack("<H", data[position + 20 : position + 22])
        record_end = position + _EOCD.size + comment_length
        if record_end == len(data):
            return position
        if fits_inside is None and record_end < len(data):
            fits_inside = position
        search_end = position + len(EOCD_SIGNATURE) - 1


def _locate_directory(data: bytes, eocd: int, max_members: int) -> _Directory:
    count, size, offset, directory_end = _directory_claims(data, eocd)
    if count > max_members:
        raise _Unreadable(f"too many entries ({count} > {max_members})")
    if count * _CENTRAL.size > size:
        raise _Unreadable("central directory too small for its entry count")
    start = _directory_start(data, size, offset, directory_end)
    if start < offset:
        raise _Unreadable("central directory offset points past the directory")
    return _Directory(start, count, size, directory_end, start - offset)


def _central_directory_members(
    data: bytes, directory: _Directory
) -> Iterator[tuple[ZipMember, _Span]]:
    position = directory.start
    for _ in range(directory.count):
        member, span, position = _central_entry(data, position, directory.end, directory.shift)
        yield member, span
    # readers that walk the directory by its size (Python's zipfile, pyzipper) would see
    # entries hidden past the count, or none of the bytes the count skips
    if position != directory.start + directory.size:
        raise _Unreadable("central directory entries do not fill its stated size")


def _check_spans(spans: list[_Span], directory_start: int) -> None:
    """Members lie before the directory, one after another: overlapping entries are how the
    Fifield zip bomb makes many members inflate the same bytes."""
    previous_end = 0
    for span in sorted(spans):
        if span.start < previous_end:
            raise _Unreadable("overlapping entries")
        if span.end > directory_start:
            raise _Unreadable("member data runs into the central directory")
        previous_end = span.end


def _directory_claims(data: bytes, eocd: int) -> tuple[int, int, int, int]:
    """(entry count, directory size, directory offset, where the directory must end)."""
    _, disk, directory_disk, on_this_disk, count, size, offset, _ = _EOCD.unpack(
        data[eocd : eocd + _EOCD.size]
    )
    locator = eocd - _ZIP64_LOCATOR.size
    if locator >= 0 and data[locator : locator + 4] == ZIP64_LOCATOR_SIGNATURE:
        return _zip64_claims(data, locator)  # whose record's fields replace these
    _check_one_disk(disk, directory_disk, on_this_disk, count)
    return count, size, offset, eocd


def _check_one_disk(disk: int, directory_disk: int, on_this_disk: int, count: int) -> None:
    # a split archive cannot be read from one part (zipfile refuses it too)
    if disk or directory_disk or on_this_disk != count:
        raise _Unreadable("archive claims to span several disks")


def _zip64_claims(data: bytes, locator: int) -> tuple[int, int, int, int]:
    _, record_disk, claimed_offset, disks = _ZIP64_LOCATOR.unpack(
        data[locator : locator + _ZIP64_LOCATOR.size]
    )
    if record_disk or disks > 1:
        raise _Unreadable("archive claims to span several disks")
    # The record normally sits right before the locator; trust its stated offset second.
    # A stub in front shifts the record up, never down: an offset past it points nowhere.
    latest_start = locator - _ZIP64_EOCD.size
    if claimed_offset > latest_start:
        raise _Unreadable("ZIP64 locator points outside the file")
    for record in (latest_start, claimed_offset):
        if 0 <= record <= latest_start and data[record : record + 4] == ZIP64_EOCD_SIGNATURE:
            fields = _ZIP64_EOCD.unpack(data[record : record + _ZIP64_EOCD.size])
            record_size, count, size, offset = fields[1], fields[7], fields[8], fields[9]
            if record_size < _ZIP64_EOCD.size - 12 or record + 12 + record_size > locator:
                raise _Unreadable("broken ZIP64 end of central directory record")
            _check_one_disk(fields[4], fields[5], fields[6], count)
            return count, size, offset, record
    raise _Unreadable("broken ZIP64 locator")


def _directory_start(data: bytes, size: int, offset: int, directory_end: int) -> int:
    """Where the central directory starts: right before its end record, else where claimed."""
    if size > directory_end:
        raise _Unreadable("central directory larger than the file")
    for start in (directory_end - size, offset):
        if size == 0:
            return start
        if start + size <= directory_end and data[start : start + 4] == CENTRAL_SIGNATURE:
            return start
    raise _Unreadable("central directory out of bounds")


def _central_entry(
    data: bytes, position: int, directory_end: int, shift: int
) -> tuple[ZipMember, _Span, int]:
    """The member described at position, where it lies, and where the next entry starts."""
    if position + _CENTRAL.size > directory_end:
        raise _Unreadable("central directory truncated")
    fields = _CENTRAL.unpack(data[position : position + _CENTRAL.size])
    signature, _, version_needed, flags, method = fields[:5]
    compressed, uncompressed, name_length, extra_length, comment_length = fields[8:13]
    local_offset = fields[16]
    if signature != CENTRAL_SIGNATURE:
        raise _Unreadable("bad central directory entry signature")
    if version_needed > _NEWEST_VERSION_NEEDED:
        raise _Unreadable(f"entry needs ZIP version {version_needed / 10:.1f}")
    name_end = position + _CENTRAL.size + name_length
    extra_end = name_end + extra_length
    next_entry = extra_end + comment_length
    if next_entry > directory_end:
        raise _Unreadable("central directory entry overruns the directory")
    raw_name = data[position + _CENTRAL.size : name_end]
    extras = _central_extra_fields(data, name_end, extra_end)
    uncompressed, compressed, local_offset = _zip64_values(
        extras.get(EXTRA_ZIP64), (uncompressed, compressed, local_offset)
    )
    central = _EncryptionSignals(flags, method, EXTRA_AES in extras)
    claims = _LocalClaims(raw_name, flags, method, compressed, uncompressed)
    local, span = _local_header(data, local_offset + shift, claims)
    name = _member_name(raw_name, flags, extras)
    return _member(name, (central, local), compressed, uncompressed), span, next_entry


def _local_header(
    data: bytes, offset: int, claims: _LocalClaims
) -> tuple[_EncryptionSignals, _Span]:
    """Cross-check the member's local header against its central entry; what it says about
    encryption, and where the member lies."""
    if offset < 0 or offset + _LOCAL.size > len(data):
        raise _Unreadable("local header out of bounds")
    fields = _LOCAL.unpack(data[offset : offset + _LOCAL.size])
    if fields[0] != LOCAL_SIGNATURE:
        raise _Unreadable("local header missing where the central directory points")
    name_end = offset + _LOCAL.size + fields[9]
    header_end = name_end + fields[10]
    if header_end + claims.compressed > len(data):
        raise _Unreadable("member data runs past the end of the file")
    extras = _extra_fields(data, name_end, header_end, keep=frozenset({EXTRA_ZIP64}))
    sizes = _zip64_values(extras.get(EXTRA_ZIP64), (fields[8], fields[7]), strict=False)
    _check_local_agrees(claims, data[offset + _LOCAL.size : name_end], fields[2], fields[3], sizes)
    signals = _EncryptionSignals(fields[2], fields[3], EXTRA_AES in extras)
    return signals, _Span(offset, header_end + claims.compressed)


def _check_local_agrees(
    claims: _LocalClaims, name: bytes, flags: int, method: int, sizes: tuple[int, ...]
) -> None:
    """A scanner or unzip reading the local header must see what the central directory says."""
    if name != claims.name:
        raise _Unreadable("local header names another file")
    if method != claims.method:
        raise _Unreadable("local and central headers disagree on the method")
    if (flags ^ claims.flags) & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION):
        raise _Unreadable("local and central headers disagree on encryption")
    # with a data descriptor the local sizes are zero: the real ones follow the data
    if not (flags | claims.flags) & FLAG_DATA_DESCRIPTOR and sizes != (
        claims.uncompressed,
        claims.compressed,
    ):
        raise _Unreadable("local and central headers disagree on the sizes")


def _salvage(data: bytes, reason: str, members: list[ZipMember], max_members: int) -> ZipReport:
    """Unreadable: ENCRYPTED_ZIP if the headers still readable show encryption, else CORRUPT_ZIP."""
    if not any(member.encrypted for member in members):
        members = list(_scan_local_headers(data, max_members))
    if any(member.encrypted for member in members):
        reason = f"{reason}; encryption seen in the readable headers"
        return ZipReport(ZipVerdict.ENCRYPTED_ZIP, tuple(members), reason=reason)
    return ZipReport(ZipVerdict.CORRUPT_ZIP, reason=reason)


def _scan_local_headers(
    data: bytes, max_members: int, end: int | None = None
) -> Iterator[ZipMember]:
    """Walk local headers from the start of the file up to end, stopping at an implausible one."""
    end = len(data) if end is None else end
    position = len(SPANNED_SIGNATURE) if data[:4] == SPANNED_SIGNATURE else 0
    for _ in range(max_members):
        if data[position : position + 4] != LOCAL_SIGNATURE or position + _LOCAL.size > end:
            return
        fields = _LOCAL.unpack(data[position : position + _LOCAL.size])
        flags, method = fields[2], fields[3]
        compressed, uncompressed, name_length, extra_length = fields[7:11]
        name_end = position + _LOCAL.size + name_length
        header_end = name_end + extra_length
        if method not in _KNOWN_METHODS or header_end > end:
            return
        extras = _extra_fields(data, name_end, header_end, keep=_FIELDS_READ)
        name = _member_name(data[position + _LOCAL.size : name_end], flags, extras)
        signals = _EncryptionSignals(flags, method, EXTRA_AES in extras)
        yield _member(name, (signals,), compressed, uncompressed)
        if flags & FLAG_DATA_DESCRIPTOR or compressed == 0xFFFFFFFF:
            # sizes follow the data: the next header is wherever the next signature is
            following = data.find(LOCAL_SIGNATURE, header_end, end)
        else:
            following = header_end + compressed
        if following <= position:
            return
        position = following


def _member(
    name: str, signals: tuple[_EncryptionSignals, ...], compressed: int, uncompressed: int
) -> ZipMember:
    """The member its headers describe; the first header's method is the one reported."""
    kind = _encryption_kind(signals)
    return ZipMember(
        name=name,
        encrypted=kind != "none",
        method=signals[0].method,
        encryption=kind,
        compressed_size=compressed,
        uncompressed_size=uncompressed,
    )


def _encryption_kind(signals: tuple[_EncryptionSignals, ...]) -> str:
    """One of none, aes, strong, zipcrypto; any header that claims encryption counts."""
    flags = 0
    for header in signals:
        flags |= header.flags
    has_aes_method = any(header.method == METHOD_AES for header in signals)
    # Bit 0 is the rule; bit 6 (PKWARE strong encryption) and method 99 (WinZip AES) are
    # counted too, because an archiver asks for a password for either.
    if not (flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) or has_aes_method):
        return "none"
    if has_aes_method or any(header.aes_extra for header in signals):
        return "aes"
    if flags & FLAG_STRONG_ENCRYPTION:
        return "strong"
    return "zipcrypto"


def _member_name(raw: bytes, flags: int, extras: dict[int, bytes]) -> str:
    """Bit 11 means UTF-8; else Info-ZIP's Unicode Path field; else UTF-8, CP932 or CP437."""
    if flags & FLAG_UTF8_NAME:
        name = raw.decode("utf-8", errors="replace")
    else:
        name = _unicode_path(raw, extras.get(EXTRA_UNICODE_PATH)) or _legacy_name(raw)
    # cut before cleaning too: clean_text walks every character
    return clean_text(name[: 4 * _MAX_NAME_CHARS])[:_MAX_NAME_CHARS]


def _unicode_path(raw: bytes, field: bytes | None) -> str | None:
    # valid only if version 1 and the CRC matches the header name it stands in for
    if field is None or len(field) < 5 or field[0] != 1:
        return None
    if int.from_bytes(field[1:5], "little") != zlib.crc32(raw):
        return None
    try:
        return field[5:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _legacy_name(raw: bytes) -> str:
    """UTF-8 first (macOS Archive Utility omits the flag; CP932 text is almost never valid
    UTF-8), then CP932 (Japanese Windows archivers), then CP437, total over all bytes."""
    for encoding in ("utf-8", "cp932"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return raw.decode("cp437")  # the historical ZIP default


def _central_extra_fields(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """The central entry's extra block, which must parse exactly as zipfile and pyzipper do:
    a field running past the block is an error (a tail of under 4 bytes is padding)."""
    fields: dict[int, bytes] = {}
    position = start
    while position + 4 <= end:  # at most (end - start) / 4 steps: linear in the directory
        header_id, size = struct.unpack("<2H", data[position : position + 4])
        body_end = position + 4 + size
        if body_end > end:
            raise _Unreadable(f"extra field {header_id:#06x} overruns its block")
        if header_id in _FIELDS_READ or header_id == EXTRA_AES:
            fields.setdefault(header_id, data[position + 4 : body_end])
        position = body_end
    return fields


def _extra_fields(data: bytes, start: int, end: int, keep: frozenset[int]) -> dict[int, bytes]:
    """Header ID → body for the extra block data[start:end]; bodies copied only for keep's IDs.

    The first occurrence of an ID wins; a truncated tail is ignored.
    """
    fields: dict[int, bytes] = {}
    position = start
    for _ in range(_MAX_EXTRA_FIELDS):
        if position + 4 > end:
            break
        header_id, size = struct.unpack("<2H", data[position : position + 4])
        body_end = position + 4 + size
        if body_end > end:
            break
        fields.setdefault(header_id, data[position + 4 : body_end] if header_id in keep else b"")
        position = body_end
    return fields


def _zip64_values(
    field: bytes | None, values: tuple[int, ...], strict: bool = True
) -> tuple[int, ...]:
    """Replace saturated 32-bit values (uncompressed, compressed[, offset]) by the ZIP64
    field's, in APPNOTE order. strict: a present field lacking a saturated value is an error
    (zipfile refuses it too); else the saturated value is kept."""
    replaced = list(values)
    position = 0
    for index, value in enumerate(values):
        if value != 0xFFFFFFFF or field is None:
            continue
        if position + 8 > len(field):
            if strict:
                raise _Unreadable("ZIP64 extra field too short")
            break
        replaced[index] = int.from_bytes(field[position : position + 8], "little")
        position += 8
    return tuple(replaced)
