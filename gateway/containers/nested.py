"""Which members of a ZIP are ZIPs themselves ("double ZIP"), by their first bytes."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from gateway.filenames import clean_text
from gateway.model import ZipReport, ZipVerdict

ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"


_MAX_NESTED_NAMES = 20
_MAX_PEEKS = 256
_PEEK_INPUT = 1024
_MAX_NAME_CHARS = 1024
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_ZIP_STORED, _ZIP_DEFLATED, _ZIP_AES = 0, 8, 99
_ZIP_ENCRYPTED_FLAGS = 0x0001 | 0x0040


def nested_zip_names(data: bytes, report: ZipReport) -> tuple[str, ...]:
    """Members that are ZIPs: named *.zip, or (when unencrypted) whose data starts like a ZIP."""
    if report.verdict not in (ZipVerdict.PLAIN_ZIP, ZipVerdict.ENCRYPTED_ZIP):
        return ()
    names = [member.name for member in report.members if member.name.casefold().endswith(".zip")]
    names.extend(_members_starting_like_a_zip(data, report))
    return tuple(dict.fromkeys(names))[:_MAX_NESTED_NAMES]


def _members_starting_like_a_zip(data: bytes, report: ZipReport) -> list[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except Exception:  # zipfile raises many kinds of error on hostile input; names still tell
        return []
    found: list[str] = []
    for index, info in enumerate(infos[:_MAX_PEEKS]):
        if _starts_like_a_zip(data, info):
            # zipinspect decoded the same central directory, in the same order, with CP932 care
            inspected = index < len(report.members)
            found.append(report.members[index].name if inspected else clean_text(info.filename[:_MAX_NAME_CHARS]))
    return found


def _starts_like_a_zip(data: bytes, info: zipfile.ZipInfo) -> bool:
    """Peek at a member's first four bytes: read as stored, or inflate just those from deflate."""
    if info.flag_bits & _ZIP_ENCRYPTED_FLAGS or info.compress_type == _ZIP_AES:
        return False
    offset = info.header_offset
    if offset < 0 or offset + _ZIP_LOCAL_HEADER.size > len(data):
        return False
    fields = _ZIP_LOCAL_HEADER.unpack_from(data, offset)
    if fields[0] != ZIP_LOCAL_SIGNATURE:
        return False
    start = offset + _ZIP_LOCAL_HEADER.size + fields[9] + fields[10]
    head = data[start : start + min(info.compress_size, _PEEK_INPUT)]
    if info.compress_type == _ZIP_STORED:
        return head[:4] == ZIP_LOCAL_SIGNATURE
    if info.compress_type == _ZIP_DEFLATED:
        try:
            return zlib.decompressobj(-15).decompress(head, 4) == ZIP_LOCAL_SIGNATURE
        except zlib.error:
            return False
    return False
