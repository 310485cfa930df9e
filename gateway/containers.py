"""Tell from an attachment's bytes whether it is an encrypted 7z, Office document or PDF,
and which members of a ZIP are ZIPs themselves.

Only the bytes decide, never the name. Nothing is decrypted and no file content is
decompressed, with two bounded exceptions: a 7z archive's own header, which 7-Zip stores
LZMA-compressed whenever it holds more than a file or two, is unpacked (at most
_MAX_7Z_HEADER bytes) because the list of coders that says "AES" lives inside it; and
the first four bytes of a deflated ZIP member are inflated to see whether it is a ZIP.
Every claimed offset, size and count is checked against the bytes present, every loop
is bounded by them, and no function here raises on hostile input.
"""

from __future__ import annotations

import io
import lzma
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import NamedTuple

from gateway.filenames import clean_text
from gateway.model import ContainerReport, ZipReport, ZipVerdict

SEVEN_ZIP_SIGNATURE = b"7z\xbc\xaf\x27\x1c"
CFB_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
PDF_SIGNATURE = b"%PDF-"
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"

NOT_A_CONTAINER = ContainerReport("none", False, "")


def inspect_container(data: bytes) -> ContainerReport:
    """Which encrypted container data is (7z, Office, PDF), if any, and whether it is encrypted."""
    if data.startswith(SEVEN_ZIP_SIGNATURE):
        return _guarded("7z", _inspect_7z, data)
    if data.startswith(CFB_SIGNATURE):
        return _guarded("office", _inspect_cfb, data)
    # readers accept a little junk (a mail client's stray bytes) before the PDF header
    if data.find(PDF_SIGNATURE, 0, _PDF_HEADER_WINDOW) >= 0:
        return _inspect_pdf(data)
    return NOT_A_CONTAINER


class _Unreadable(Exception):
    """The structure contradicts itself or runs past the data; the message is logged."""


def _guarded(kind: str, inspect: Callable[[bytes], ContainerReport], data: bytes) -> ContainerReport:
    # A structure we cannot read gets no "encrypted" verdict: encryption is only reported
    # where the bytes show it.
    try:
        return inspect(data)
    except _Unreadable as problem:
        return ContainerReport(kind, False, f"unreadable: {problem}")


# --- 7z -------------------------------------------------------------------------------

_7Z_START_HEADER = struct.Struct("<6s2BLQQL")
_7Z_AES = b"\x06\xf1\x07\x01"
_7Z_COPY = b"\x00"
_7Z_LZMA = b"\x03\x01\x01"
_7Z_LZMA2 = b"\x21"
# property IDs of the 7z header (7zFormat.txt)
_END, _HEADER, _ARCHIVE_PROPERTIES, _ADDITIONAL_STREAMS, _MAIN_STREAMS = 0x00, 0x01, 0x02, 0x03, 0x04
_PACK_INFO, _UNPACK_INFO, _SIZE, _CRC, _FOLDER, _UNPACK_SIZE = 0x06, 0x07, 0x09, 0x0A, 0x0B, 0x0C
_ENCODED_HEADER = 0x17
_MAX_7Z_HEADER = 1 << 20  # a header listing tens of thousands of files still fits
_MAX_7Z_HEADER_LAYERS = 4
_MAX_CODERS = 64  # 7-Zip's own limit per folder


class _Coder(NamedTuple):
    method: bytes
    properties: bytes


class _Streams(NamedTuple):
    pack_position: int
    pack_sizes: list[int]
    folders: list[list[_Coder]]
    unpack_sizes: list[list[int]]  # per folder, one per coder output


class _Reader:
    """Reads 7z header fields from bytes; remembers every coder method it has passed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0
        self.methods: list[bytes] = []

    def byte(self) -> int:
        if self.position >= len(self.data):
            raise _Unreadable("7z header ends early")
        self.position += 1
        return self.data[self.position - 1]

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.position:
            raise _Unreadable("7z header ends early")
        self.position += count
        return self.data[self.position - count : self.position]

    def number(self) -> int:
        """7z's variable-length number: leading 1-bits of the first byte count the extra bytes."""
        first = self.byte()
        value = 0
        for index in range(8):
            mask = 0x80 >> index
            if not first & mask:
                return value | ((first & (mask - 1)) << (8 * index))
            value |= self.byte() << (8 * index)
        return value

    def count(self) -> int:
        """A number of records that follow: each takes at least one byte, so at most what is left."""
        value = self.number()
        if value > len(self.data) - self.position:
            raise _Unreadable("7z record count larger than the header")
        return value

    def expect(self, property_id: int) -> None:
        if self.byte() != property_id:
            raise _Unreadable(f"7z header lacks property 0x{property_id:02x}")


def _inspect_7z(data: bytes) -> ContainerReport:
    if len(data) < _7Z_START_HEADER.size:
        raise _Unreadable("7z start header truncated")
    fields = _7Z_START_HEADER.unpack_from(data)
    start_crc, next_offset, next_size, next_crc = fields[3:]
    if zlib.crc32(data[12:32]) != start_crc:
        raise _Unreadable("7z start header CRC mismatch")
    if next_size == 0:
        return ContainerReport("7z", False, "empty 7z archive")
    header_start = _7Z_START_HEADER.size + next_offset
    if next_size > len(data) - header_start:
        raise _Unreadable("7z header lies past the end of the data (truncated?)")
    header = data[header_start : header_start + next_size]
    if zlib.crc32(header) != next_crc:
        raise _Unreadable("7z header CRC mismatch")
    for _ in range(_MAX_7Z_HEADER_LAYERS):
        if header[:1] != bytes([_ENCODED_HEADER]):
            return _plain_header_verdict(_Reader(header))
        reader = _Reader(header[1:])
        streams = _read_streams(reader)
        if _7Z_AES in reader.methods:
            return ContainerReport("7z", True, "7z header encrypted with AES (file names hidden)")
        header = _decoded_7z_header(data, streams)
    raise _Unreadable("7z header encoded too many times")


def _plain_header_verdict(reader: _Reader) -> ContainerReport:
    try:
        _read_plain_header(reader)
    except _Unreadable:
        # an AES coder already passed is proof enough, whatever follows it
        if _7Z_AES not in reader.methods:
            raise
    if _7Z_AES in reader.methods:
        return ContainerReport("7z", True, "7z AES coder on the file data")
    return ContainerReport("7z", False, "7z without an AES coder")


def _read_plain_header(reader: _Reader) -> None:
    reader.expect(_HEADER)
    property_id = reader.byte()
    if property_id == _ARCHIVE_PROPERTIES:
        while reader.byte() != _END:
            reader.take(reader.count())
        property_id = reader.byte()
    if property_id == _ADDITIONAL_STREAMS:
        _read_streams(reader)
        property_id = reader.byte()
    if property_id == _MAIN_STREAMS:
        _read_streams(reader)  # the folders' coders: all that is needed, the rest is names


def _read_streams(reader: _Reader) -> _Streams:
    """PackInfo and UnpackInfo of a StreamsInfo record; stops before any SubStreamsInfo."""
    property_id = reader.byte()
    pack_position, pack_sizes = 0, []
    if property_id == _PACK_INFO:
        pack_position, pack_sizes = _read_pack_info(reader)
        property_id = reader.byte()
    folders: list[list[_Coder]] = []
    unpack_sizes: list[list[int]] = []
    if property_id == _UNPACK_INFO:
        folders, unpack_sizes = _read_unpack_info(reader)
    return _Streams(pack_position, pack_sizes, folders, unpack_sizes)


def _read_pack_info(reader: _Reader) -> tuple[int, list[int]]:
    pack_position = reader.number()
    stream_count = reader.count()
    sizes: list[int] = []
    while (property_id := reader.byte()) != _END:
        if property_id == _SIZE:
            sizes = [reader.number() for _ in range(stream_count)]
        elif property_id == _CRC:
            _skip_digests(reader, stream_count)
        else:
            raise _Unreadable(f"unexpected 7z pack info property 0x{property_id:02x}")
    return pack_position, sizes


def _read_unpack_info(reader: _Reader) -> tuple[list[list[_Coder]], list[list[int]]]:
    reader.expect(_FOLDER)
    folder_count = reader.count()
    if reader.byte() != 0:
        raise _Unreadable("7z folders stored outside the header")
    folders = [_read_folder(reader) for _ in range(folder_count)]
    reader.expect(_UNPACK_SIZE)
    unpack_sizes = [[reader.number() for _ in range(outputs)] for _, outputs in folders]
    while (property_id := reader.byte()) != _END:
        if property_id != _CRC:
            raise _Unreadable(f"unexpected 7z unpack info property 0x{property_id:02x}")
        _skip_digests(reader, folder_count)
    return [coders for coders, _ in folders], unpack_sizes


def _read_folder(reader: _Reader) -> tuple[list[_Coder], int]:
    """The folder's coders and its number of output streams."""
    coder_count = reader.count()
    if not 0 < coder_count <= _MAX_CODERS:
        raise _Unreadable(f"7z folder with {coder_count} coders")
    coders: list[_Coder] = []
    inputs = outputs = 0
    for _ in range(coder_count):
        flags = reader.byte()
        if flags & 0xC0:
            raise _Unreadable("7z coder with reserved flags")
        method = reader.take(flags & 0x0F)
        reader.methods.append(method)
        if flags & 0x10:
            inputs += _bounded_streams(reader.number())
            outputs += _bounded_streams(reader.number())
        else:
            inputs, outputs = inputs + 1, outputs + 1
        properties = reader.take(reader.count()) if flags & 0x20 else b""
        coders.append(_Coder(method, properties))
    bind_pairs = outputs - 1
    for _ in range(bind_pairs):
        reader.number(), reader.number()
    packed_streams = inputs - bind_pairs
    if packed_streams < 1:
        raise _Unreadable("7z folder without a packed stream")
    if packed_streams > 1:
        for _ in range(packed_streams):
            reader.number()
    return coders, outputs


def _bounded_streams(count: int) -> int:
    if not 0 < count <= _MAX_CODERS:
        raise _Unreadable(f"7z coder with {count} streams")
    return count


def _skip_digests(reader: _Reader, count: int) -> None:
    if count > len(reader.data):
        raise _Unreadable("7z digest count larger than the header")
    if reader.byte():  # all defined
        defined = count
    else:
        bits = reader.take((count + 7) // 8)
        defined = sum(byte.bit_count() for byte in bits)
    reader.take(4 * defined)


def _decoded_7z_header(data: bytes, streams: _Streams) -> bytes:
    """The header an encoded header stands for, unpacked from its single LZMA/LZMA2/Copy coder."""
    if not streams.folders or not streams.pack_sizes:
        raise _Unreadable("7z encoded header without its stream")
    coders = streams.folders[0]
    if len(coders) != 1:
        raise _Unreadable(f"7z header packed with {len(coders)} chained coders")
    start = _7Z_START_HEADER.size + streams.pack_position
    size = streams.pack_sizes[0]
    if start > len(data) or size > len(data) - start:
        raise _Unreadable("7z packed header lies past the end of the data")
    packed = data[start : start + size]
    limit = min(streams.unpack_sizes[0][0], _MAX_7Z_HEADER)
    if coders[0].method == _7Z_COPY:
        return packed[:limit]
    try:
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[_lzma_filter(coders[0], limit)])
        return decompressor.decompress(packed, max_length=limit)
    except (lzma.LZMAError, ValueError) as problem:
        raise _Unreadable(f"7z header does not unpack ({problem})") from None


def _lzma_filter(coder: _Coder, limit: int) -> dict[str, int]:
    # The dictionary is allocated up front at the size the archive claims; capped at what
    # will be unpacked, since no back-reference can reach further than that.
    dictionary_cap = max(4096, limit)
    method, properties = coder
    if method == _7Z_LZMA and len(properties) == 5 and properties[0] < 9 * 5 * 5:
        literal_context, rest = properties[0] % 9, properties[0] // 9
        claimed = int.from_bytes(properties[1:5], "little")
        return {
            "id": lzma.FILTER_LZMA1,
            "lc": literal_context,
            "lp": rest % 5,
            "pb": rest // 5,
            "dict_size": max(4096, min(claimed, dictionary_cap)),
        }
    if method == _7Z_LZMA2 and len(properties) == 1 and properties[0] <= 40:
        bits = properties[0]
        claimed = 0xFFFFFFFF if bits == 40 else (2 | (bits & 1)) << (bits // 2 + 11)
        return {"id": lzma.FILTER_LZMA2, "dict_size": max(4096, min(claimed, dictionary_cap))}
    raise _Unreadable(f"7z header packed with method {method.hex() or 'none'}")


# --- Office: OLE compound file (CFB) ---------------------------------------------------

_CFB_HEADER_SIZE = 512
_CFB_HEADER_DIFAT_ENTRIES = 109
_CFB_DIRECTORY_ENTRY = 128
_CFB_LAST_REGULAR_SECTOR = 0xFFFFFFFA
_CFB_FREE = 0xFFFFFFFF
_CFB_STREAM = 2
_CFB_MINI_SECTOR = 64
_WORD_FIB_MAGIC = 0xA5EC
_WORD_ENCRYPTED = 0x0100  # FIB fEncrypted: RC4 or XOR obfuscation, a password opens it
_XLS_BOF = 0x0809
_XLS_FILEPASS = 0x002F
_PPT_ENCRYPTED_TOKEN = 0xF3D1C4DF  # CurrentUserAtom.headerToken of an encrypted presentation


class _DirectoryEntry(NamedTuple):
    name: str
    kind: int
    start: int
    size: int


class _CompoundFile:
    """Just enough of [MS-CFB] to list stream names and read a stream's first bytes."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _CFB_HEADER_SIZE:
            raise _Unreadable("compound file header truncated")
        shift = struct.unpack_from("<H", data, 0x1E)[0]
        if shift not in (9, 12):
            raise _Unreadable(f"compound file sector shift {shift}")
        self.data = data
        self.sector_size = 1 << shift
        self.sector_count = len(data) // self.sector_size - 1  # the header fills sector -1
        self.mini_cutoff = struct.unpack_from("<L", data, 0x38)[0]
        self.fat_sectors = self._fat_sectors()

    def entries(self) -> list[_DirectoryEntry]:
        first_directory_sector = struct.unpack_from("<L", self.data, 0x30)[0]
        entries: list[_DirectoryEntry] = []
        for sector in self._chain(first_directory_sector):
            offset = self._offset(sector)
            for entry in range(offset, offset + self.sector_size, _CFB_DIRECTORY_ENTRY):
                entries.append(self._entry(entry))
        return entries

    def head(self, entry: _DirectoryEntry, root: _DirectoryEntry, count: int) -> bytes:
        """Up to count bytes from the start of a stream (count at most one mini sector)."""
        if entry.size >= self.mini_cutoff:
            offset = self._offset(entry.start)
            return self.data[offset : offset + min(count, entry.size)]
        # a small stream lives in the mini stream, which is the root entry's chain
        position = entry.start * _CFB_MINI_SECTOR
        for index, sector in enumerate(self._chain(root.start)):
            if index == position // self.sector_size:
                offset = self._offset(sector) + position % self.sector_size
                return self.data[offset : offset + min(count, entry.size, _CFB_MINI_SECTOR)]
        raise _Unreadable("mini stream shorter than a stream in it")

    def _fat_sectors(self) -> list[int]:
        """The FAT's own sectors: 109 listed in the header, the rest in the DIFAT chain."""
        fat_sector_count = struct.unpack_from("<L", self.data, 0x2C)[0]
        listed = list(struct.unpack_from(f"<{_CFB_HEADER_DIFAT_ENTRIES}L", self.data, 0x4C))
        difat_sector = struct.unpack_from("<L", self.data, 0x44)[0]
        per_difat_sector = self.sector_size // 4 - 1
        seen: set[int] = set()
        while len(listed) < fat_sector_count and difat_sector <= _CFB_LAST_REGULAR_SECTOR:
            if difat_sector in seen:
                raise _Unreadable("compound file DIFAT chain loops")
            seen.add(difat_sector)
            offset = self._offset(difat_sector)
            values = struct.unpack_from(f"<{per_difat_sector + 1}L", self.data, offset)
            listed.extend(values[:-1])
            difat_sector = values[-1]
        return listed[:fat_sector_count]  # an entry that is no sector fails when used

    def _chain(self, sector: int) -> list[int]:
        """The sectors of a chain, in order; a loop or a jump outside the data is an error."""
        chain: list[int] = []
        seen: set[int] = set()
        per_fat_sector = self.sector_size // 4
        while sector <= _CFB_LAST_REGULAR_SECTOR:
            if sector in seen or sector >= self.sector_count:
                raise _Unreadable("compound file sector chain loops or leaves the data")
            seen.add(sector)
            chain.append(sector)
            fat_index = sector // per_fat_sector
            if fat_index >= len(self.fat_sectors):
                raise _Unreadable("compound file FAT too short")
            entry_offset = self._offset(self.fat_sectors[fat_index]) + 4 * (sector % per_fat_sector)
            sector = struct.unpack_from("<L", self.data, entry_offset)[0]
        return chain

    def _offset(self, sector: int) -> int:
        if sector >= self.sector_count:
            raise _Unreadable("compound file sector outside the data")
        return (sector + 1) * self.sector_size

    def _entry(self, offset: int) -> _DirectoryEntry:
        name_bytes = struct.unpack_from("<H", self.data, offset + 0x40)[0]
        raw_name = self.data[offset : offset + min(max(name_bytes - 2, 0), 62)]
        kind = self.data[offset + 0x42]
        start, size = struct.unpack_from("<LQ", self.data, offset + 0x74)
        if self.sector_size == 512:
            size &= 0xFFFFFFFF  # version 3 files may leave garbage in the high half
        return _DirectoryEntry(raw_name.decode("utf-16-le", "replace"), kind, start, size)


def _inspect_cfb(data: bytes) -> ContainerReport:
    try:
        compound = _CompoundFile(data)
        entries = compound.entries()
    except struct.error:
        raise _Unreadable("compound file structure runs past the data") from None
    streams = {entry.name.casefold(): entry for entry in entries if entry.kind == _CFB_STREAM}
    if "encryptioninfo" in streams:
        reason = "password-protected Office document (EncryptionInfo stream)"
        return ContainerReport("office", True, reason)
    root = entries[0] if entries else None
    legacy = _legacy_office_encryption(compound, streams, root) if root else None
    if legacy:
        return ContainerReport("office", True, legacy)
    return ContainerReport("office", False, "compound file without encryption markers")


def _legacy_office_encryption(
    compound: _CompoundFile, streams: dict[str, _DirectoryEntry], root: _DirectoryEntry
) -> str | None:
    """Word's FIB flag, Excel's FILEPASS record, PowerPoint's CurrentUserAtom token."""
    word = streams.get("worddocument")
    if word is not None and _word_encrypted(compound.head(word, root, 12)):
        return "password-protected Word 97-2003 document (FIB fEncrypted)"
    book = streams.get("workbook") or streams.get("book")
    if book is not None and _excel_encrypted(compound.head(book, root, 64)):
        return "password-protected Excel 97-2003 workbook (FILEPASS record)"
    current_user = streams.get("current user")
    if current_user is not None and _powerpoint_encrypted(compound.head(current_user, root, 16)):
        return "password-protected PowerPoint 97-2003 presentation (CurrentUserAtom)"
    return None


def _word_encrypted(head: bytes) -> bool:
    if len(head) < 12:
        return False
    magic, flags = struct.unpack_from("<H", head)[0], struct.unpack_from("<H", head, 10)[0]
    return magic == _WORD_FIB_MAGIC and bool(flags & _WORD_ENCRYPTED)


def _excel_encrypted(head: bytes) -> bool:
    if len(head) < 4 or struct.unpack_from("<H", head)[0] != _XLS_BOF:
        return False
    after_bof = 4 + struct.unpack_from("<H", head, 2)[0]  # FILEPASS directly follows the BOF
    return head[after_bof : after_bof + 2] == struct.pack("<H", _XLS_FILEPASS)


def _powerpoint_encrypted(head: bytes) -> bool:
    return len(head) == 16 and struct.unpack_from("<L", head, 12)[0] == _PPT_ENCRYPTED_TOKEN


# --- PDF ------------------------------------------------------------------------------

_PDF_HEADER_WINDOW = 1024
_PDF_TAIL = 64 * 1024
_PDF_SPACE = rb"[\x00\t\n\x0c\r ]"
_PDF_LONGEST_ENTRY = 8 + 3 * 64 + 10 + 5 + 1  # the most the pattern below can span
# /Encrypt followed by an indirect reference or a dictionary; the name must end there,
# so /EncryptMetadata (a key inside the encryption dictionary) does not count
_PDF_ENCRYPT_ENTRY = re.compile(
    rb"/Encrypt(?:%s{1,64}\d{1,10}%s{1,64}\d{1,5}%s{1,64}R|%s{0,64}<<)"
    % (_PDF_SPACE, _PDF_SPACE, _PDF_SPACE, _PDF_SPACE)
)


def _inspect_pdf(data: bytes) -> ContainerReport:
    # The trailer (or cross-reference stream) normally sits at the end; a linearized file or
    # one with a long appended tail has it earlier, so the rest is searched too.
    tail_start = max(0, len(data) - _PDF_TAIL)
    in_tail = _PDF_ENCRYPT_ENTRY.search(data, tail_start)
    if in_tail or _PDF_ENCRYPT_ENTRY.search(data, 0, tail_start + _PDF_LONGEST_ENTRY):
        return ContainerReport("pdf", True, "encrypted PDF (/Encrypt in the trailer)")
    return ContainerReport("pdf", False, "PDF without an /Encrypt entry")


# --- ZIPs inside a ZIP ----------------------------------------------------------------

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
