"""What a RAR archive's block headers say about it: RAR 1.5-4.x or RAR 5, whether anything
in it is encrypted, and whether every file is stored without compression (so its bytes
sit in the archive as they are, for the caller to scan).

Only headers are read: nothing is decompressed or decrypted. Every header's CRC is
checked (but for three obsolete RAR 2 block types whose CRC rules unrar itself does not
follow); every claimed size is checked against the bytes present before it is used, no
allocation follows one, and the walk is bounded by the data and by _MAX_BLOCKS. Hostile
input raises nothing but Unreadable (a broken structure) and InspectionLimit (too many
blocks); an encrypted file header met before the structure breaks is still reported.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from gateway.containers.base import InspectionLimit, Unreadable

RAR4_SIGNATURE = b"Rar!\x1a\x07\x00"
RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"
_MAX_BLOCKS = 100_000

# RAR 1.5-4.x (technote of RAR 3.x/4.x)
_RAR4_BLOCK = struct.Struct("<HBHH")  # HEAD_CRC, HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE
_RAR4_FILE = struct.Struct("<LLBLLBBHL")  # PACK_SIZE .. ATTR, right after the block fields
_RAR4_MAIN, _RAR4_FILE_HEAD, _RAR4_END = 0x73, 0x74, 0x7B
_RAR4_SERVICE = 0x7A  # NEWSUB_HEAD: laid out like a file header (CMT, STM, ACL, RR, ...)
_RAR4_UNCHECKED = frozenset({0x76, 0x77, 0x79})  # old AV, subblock, sign: CRC rules of their own
_RAR4_MAIN_FIXED = 13  # block fields + HighPosAV + PosAV
_RAR4_LONG_BLOCK = 0x8000
_RAR4_MAIN_COMMENT = 0x0002  # RAR 2.x comment inside the main header, outside its CRC
_RAR4_MAIN_HEADERS_ENCRYPTED = 0x0080
_RAR4_MAIN_ENCRYPT_VERSION = 0x0200
_RAR4_FILE_ENCRYPTED = 0x0004
_RAR4_FILE_COMMENT = 0x0008  # RAR 2.x comment inside the file header, outside its CRC
_RAR4_FILE_DIRECTORY_MASK = 0x00E0
_RAR4_FILE_LARGE = 0x0100
_RAR4_FILE_SALT = 0x0400
_RAR4_FILE_EXTENDED_TIME = 0x1000
_RAR4_STORED = 0x30

# RAR 5 (technote of RAR 5.0)
_RAR5_MAIN, _RAR5_FILE, _RAR5_SERVICE, _RAR5_ENCRYPTION, _RAR5_END = 1, 2, 3, 4, 5
_RAR5_HAS_EXTRA, _RAR5_HAS_DATA = 0x0001, 0x0002
_RAR5_DIRECTORY, _RAR5_HAS_TIME, _RAR5_HAS_CRC = 0x0001, 0x0002, 0x0004
_RAR5_EXTRA_ENCRYPTION = 0x01
_RAR5_MAX_HEADER = 2 * 1024 * 1024  # the technote's limit on a header's size
_RAR5_MAX_VINT_BYTES = 10

_STREAM_SERVICE = b"STM"  # NTFS alternate data streams: file content, like a file's own


@dataclass(frozen=True)
class RarReport:
    version: int  # 4 (RAR 1.5-4.x) or 5
    # headers encrypted, or any file (or service) header with the password flag / record
    encrypted: bool
    # every file (and alternate data stream) stored without compression or encryption, so
    # its bytes are in the archive as they are; False when the headers are encrypted
    all_stored: bool
    files: int  # file headers read, directories not counted
    reason: str  # for the log


class _Tally:
    """What the headers walked so far have said."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.files = 0
        self.encrypted = 0
        self.compressed = 0

    def entry(self, *, counted: bool, encrypted: bool, stored: bool) -> None:
        self.files += counted
        self.encrypted += encrypted
        self.compressed += not stored

    def report(self) -> RarReport:
        label = f"RAR {self.version}"
        if self.encrypted:
            reason = f"{label}: {self.files} files, {self.encrypted} encrypted"
        elif self.compressed:
            reason = f"{label}: {self.files} files, {self.compressed} compressed"
        else:
            reason = f"{label}: {self.files} files, all stored"
        all_stored = not self.compressed and not self.encrypted  # encrypted bytes are not as they are
        return RarReport(self.version, bool(self.encrypted), all_stored, self.files, reason)

    def headers_encrypted(self) -> RarReport:
        reason = f"RAR {self.version} headers encrypted (file names hidden)"
        return RarReport(self.version, True, False, self.files, reason)


def inspect_rar(data: bytes) -> RarReport:
    """Walk the block headers of data, which starts at a RAR signature."""
    if data.startswith(RAR5_SIGNATURE):
        tally, walk = _Tally(5), _walk_rar5
    elif data.startswith(RAR4_SIGNATURE):
        tally, walk = _Tally(4), _walk_rar4
    else:
        raise Unreadable("no RAR signature")
    try:
        return walk(data, tally)
    except Unreadable as problem:
        if not tally.encrypted:
            raise
        # an encrypted entry already read is proof enough, whatever follows it
        partial = tally.report()
        return RarReport(tally.version, True, False, partial.files, f"{partial.reason}; then {problem}")


# --- RAR 1.5-4.x ---------------------------------------------------------------------------


def _walk_rar4(data: bytes, tally: _Tally) -> RarReport:
    position = len(RAR4_SIGNATURE)  # the marker block is the signature itself
    blocks = 0
    while position < len(data):
        blocks += 1
        if blocks > _MAX_BLOCKS:
            raise InspectionLimit(f"RAR archive has more than {_MAX_BLOCKS} blocks")
        if len(data) - position < _RAR4_BLOCK.size:
            raise Unreadable("RAR block header truncated")
        crc, kind, flags, size = _RAR4_BLOCK.unpack_from(data, position)
        long_block = bool(flags & _RAR4_LONG_BLOCK)
        if size < _RAR4_BLOCK.size + 4 * long_block:
            raise Unreadable(f"RAR block header of {size} bytes")
        if size > len(data) - position:
            raise Unreadable("RAR block header runs past the end of the data (truncated?)")
        header = data[position : position + size]
        if blocks == 1 and kind != _RAR4_MAIN:
            raise Unreadable("RAR archive header missing")
        data_size = struct.unpack_from("<L", header, 7)[0] if long_block else 0
        checked_end, entry = size, None
        if kind == _RAR4_MAIN:
            checked_end = _rar4_main_checked_end(header, flags)
        elif kind in (_RAR4_FILE_HEAD, _RAR4_SERVICE):
            data_size, entry = _rar4_file(header, flags, kind)
            if kind == _RAR4_FILE_HEAD and flags & _RAR4_FILE_COMMENT:
                checked_end = _rar4_file_fields_end(header, flags)
        if kind not in _RAR4_UNCHECKED and zlib.crc32(header[2:checked_end]) & 0xFFFF != crc:
            raise Unreadable(f"RAR block 0x{kind:02x} header CRC mismatch")
        if entry is not None:
            tally.entry(**entry)
        if kind == _RAR4_MAIN and flags & _RAR4_MAIN_HEADERS_ENCRYPTED:
            return tally.headers_encrypted()  # every header after this one is AES-encrypted
        if kind == _RAR4_END:
            break
        position += size
        if data_size > len(data) - position:
            raise Unreadable("RAR block data runs past the end of the data (truncated?)")
        position += data_size
    if blocks == 0:
        raise Unreadable("RAR archive header missing")
    return tally.report()


def _rar4_main_checked_end(header: bytes, flags: int) -> int:
    fixed = _RAR4_MAIN_FIXED + bool(flags & _RAR4_MAIN_ENCRYPT_VERSION)
    if len(header) < fixed:
        raise Unreadable("RAR archive header truncated")
    return fixed if flags & _RAR4_MAIN_COMMENT else len(header)


def _rar4_file(header: bytes, flags: int, kind: int) -> tuple[int, dict[str, bool]]:
    """The size of a file or service header's data, and what to tally for it."""
    position = _RAR4_BLOCK.size
    if len(header) < position + _RAR4_FILE.size:
        raise Unreadable("RAR file header truncated")
    fields = _RAR4_FILE.unpack_from(header, position)
    pack_size, method, name_size = fields[0], fields[6], fields[7]
    position += _RAR4_FILE.size
    if flags & _RAR4_FILE_LARGE:
        if len(header) < position + 8:
            raise Unreadable("RAR file header truncated")
        pack_size |= struct.unpack_from("<L", header, position)[0] << 32
        position += 8
    if name_size > len(header) - position:
        raise Unreadable("RAR file name runs past its header")
    name = header[position : position + name_size]
    encrypted = bool(flags & _RAR4_FILE_ENCRYPTED)
    stored = method == _RAR4_STORED
    if kind == _RAR4_FILE_HEAD:
        directory = flags & _RAR4_FILE_DIRECTORY_MASK == _RAR4_FILE_DIRECTORY_MASK
        return pack_size, {"counted": not directory, "encrypted": encrypted, "stored": stored or directory}
    # a comment, ACL or recovery record is no content; an alternate data stream is
    return pack_size, {"counted": False, "encrypted": encrypted, "stored": stored or name != _STREAM_SERVICE}


def _rar4_file_fields_end(header: bytes, flags: int) -> int:
    """Where a file header's own fields end and a RAR 2 comment inside it begins: past the
    name, the salt, and EXT_TIME (a flag word, then for each of mtime, ctime, atime and
    arctime present, a DOS time (not for mtime) and 0-3 bytes of fraction)."""
    position = _RAR4_BLOCK.size + _RAR4_FILE.size + 8 * bool(flags & _RAR4_FILE_LARGE)
    position += struct.unpack_from("<H", header, _RAR4_BLOCK.size + 19)[0]  # NAME_SIZE
    position += 8 * bool(flags & _RAR4_FILE_SALT)
    if flags & _RAR4_FILE_EXTENDED_TIME and position + 2 <= len(header):
        time_flags = struct.unpack_from("<H", header, position)[0]
        position += 2
        for index, shift in enumerate((12, 8, 4, 0)):
            nibble = time_flags >> shift
            if nibble & 0x8:
                position += (4 if index else 0) + (nibble & 0x3)
    if position > len(header):
        raise Unreadable("RAR file header fields run past its header")
    return position


# --- RAR 5 ---------------------------------------------------------------------------------


class _Fields:
    """Reads RAR 5 header fields between two positions of the data."""

    def __init__(self, data: bytes, position: int, end: int) -> None:
        self.data = data
        self.position = position
        self.end = end

    def vint(self) -> int:
        """Seven bits a byte, low first; a set high bit means another byte follows."""
        value = 0
        for index in range(_RAR5_MAX_VINT_BYTES):
            if self.position >= self.end:
                raise Unreadable("RAR 5 header field runs past its header")
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                return value
        raise Unreadable("RAR 5 number longer than 10 bytes")

    def take(self, count: int) -> bytes:
        if count > self.end - self.position:
            raise Unreadable("RAR 5 header field runs past its header")
        self.position += count
        return self.data[self.position - count : self.position]


def _walk_rar5(data: bytes, tally: _Tally) -> RarReport:
    position = len(RAR5_SIGNATURE)
    blocks = 0
    while position < len(data):
        blocks += 1
        if blocks > _MAX_BLOCKS:
            raise InspectionLimit(f"RAR archive has more than {_MAX_BLOCKS} blocks")
        if len(data) - position < 4:
            raise Unreadable("RAR 5 block header truncated")
        crc = struct.unpack_from("<L", data, position)[0]
        size_field = _Fields(data, position + 4, min(len(data), position + 4 + _RAR5_MAX_VINT_BYTES))
        size = size_field.vint()
        if not 0 < size <= _RAR5_MAX_HEADER:
            raise Unreadable(f"RAR 5 header of {size} bytes")
        header_end = size_field.position + size
        if header_end > len(data):
            raise Unreadable("RAR 5 header runs past the end of the data (truncated?)")
        if zlib.crc32(data[position + 4 : header_end]) != crc:
            raise Unreadable("RAR 5 header CRC mismatch")
        fields = _Fields(data, size_field.position, header_end)
        kind, flags = fields.vint(), fields.vint()
        extra_size = fields.vint() if flags & _RAR5_HAS_EXTRA else 0
        data_size = fields.vint() if flags & _RAR5_HAS_DATA else 0
        if extra_size > header_end - fields.position:
            raise Unreadable("RAR 5 extra area larger than its header")
        if blocks == 1 and kind not in (_RAR5_MAIN, _RAR5_ENCRYPTION):
            raise Unreadable("RAR 5 archive header missing")
        if kind == _RAR5_ENCRYPTION:
            return tally.headers_encrypted()  # every header after this one is AES-encrypted
        if kind in (_RAR5_FILE, _RAR5_SERVICE):
            fields.end = header_end - extra_size
            _rar5_file(fields, kind, header_end, tally)
        if kind == _RAR5_END:
            break
        if data_size > len(data) - header_end:
            raise Unreadable("RAR 5 block data runs past the end of the data (truncated?)")
        position = header_end + data_size
    if blocks == 0:
        raise Unreadable("RAR 5 archive header missing")
    return tally.report()


def _rar5_file(fields: _Fields, kind: int, header_end: int, tally: _Tally) -> None:
    """Tally a file or service header: its fields, then the records of its extra area."""
    file_flags = fields.vint()
    fields.vint()  # unpacked size
    fields.vint()  # attributes
    if file_flags & _RAR5_HAS_TIME:
        fields.take(4)
    if file_flags & _RAR5_HAS_CRC:
        fields.take(4)
    compression = fields.vint()
    fields.vint()  # host OS
    name = fields.take(fields.vint())
    stored = (compression >> 7) & 0x7 == 0
    encrypted = False
    extra = _Fields(fields.data, fields.end, header_end)
    while extra.position < header_end:
        record_size = extra.vint()
        if not 0 < record_size <= header_end - extra.position:
            raise Unreadable("RAR 5 extra record runs past its header")
        record_end = extra.position + record_size
        encrypted |= _Fields(extra.data, extra.position, record_end).vint() == _RAR5_EXTRA_ENCRYPTION
        extra.position = record_end
    if kind == _RAR5_FILE:
        directory = bool(file_flags & _RAR5_DIRECTORY)
        tally.entry(counted=not directory, encrypted=encrypted, stored=stored or directory)
    else:  # a comment, ACL, quick-open or recovery record is no content; a data stream is
        tally.entry(counted=False, encrypted=encrypted, stored=stored or name != _STREAM_SERVICE)
