"""Whether a 7z archive is encrypted: its coders list AES (in a header that 7-Zip
usually stores LZMA-compressed, unpacked here within a bound)."""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import NamedTuple

from gateway.containers.base import Unreadable
from gateway.model import ContainerReport

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
            raise Unreadable("7z header ends early")
        self.position += 1
        return self.data[self.position - 1]

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.position:
            raise Unreadable("7z header ends early")
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
            raise Unreadable("7z record count larger than the header")
        return value

    def expect(self, property_id: int) -> None:
        if self.byte() != property_id:
            raise Unreadable(f"7z header lacks property 0x{property_id:02x}")


def inspect_7z(data: bytes) -> ContainerReport:
    if len(data) < _7Z_START_HEADER.size:
        raise Unreadable("7z start header truncated")
    fields = _7Z_START_HEADER.unpack_from(data)
    start_crc, next_offset, next_size, next_crc = fields[3:]
    if zlib.crc32(data[12:32]) != start_crc:
        raise Unreadable("7z start header CRC mismatch")
    if next_size == 0:
        return ContainerReport("7z", False, "empty 7z archive")
    header_start = _7Z_START_HEADER.size + next_offset
    if next_size > len(data) - header_start:
        raise Unreadable("7z header lies past the end of the data (truncated?)")
    header = data[header_start : header_start + next_size]
    if zlib.crc32(header) != next_crc:
        raise Unreadable("7z header CRC mismatch")
    for _ in range(_MAX_7Z_HEADER_LAYERS):
        if header[:1] != bytes([_ENCODED_HEADER]):
            return _plain_header_verdict(_Reader(header))
        reader = _Reader(header[1:])
        streams = _read_streams(reader)
        if _7Z_AES in reader.methods:
            return ContainerReport("7z", True, "7z header encrypted with AES (file names hidden)")
        header = _decoded_7z_header(data, streams)
    raise Unreadable("7z header encoded too many times")


def _plain_header_verdict(reader: _Reader) -> ContainerReport:
    try:
        _read_plain_header(reader)
    except Unreadable:
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
            raise Unreadable(f"unexpected 7z pack info property 0x{property_id:02x}")
    return pack_position, sizes


def _read_unpack_info(reader: _Reader) -> tuple[list[list[_Coder]], list[list[int]]]:
    reader.expect(_FOLDER)
    folder_count = reader.count()
    if reader.byte() != 0:
        raise Unreadable("7z folders stored outside the header")
    folders = [_read_folder(reader) for _ in range(folder_count)]
    reader.expect(_UNPACK_SIZE)
    unpack_sizes = [[reader.number() for _ in range(outputs)] for _, outputs in folders]
    while (property_id := reader.byte()) != _END:
        if property_id != _CRC:
            raise Unreadable(f"unexpected 7z unpack info property 0x{property_id:02x}")
        _skip_digests(reader, folder_count)
    return [coders for coders, _ in folders], unpack_sizes


def _read_folder(reader: _Reader) -> tuple[list[_Coder], int]:
    """The folder's coders and its number of output streams."""
    coder_count = reader.count()
    if not 0 < coder_count <= _MAX_CODERS:
        raise Unreadable(f"7z folder with {coder_count} coders")
    coders: list[_Coder] = []
    inputs = outputs = 0
    for _ in range(coder_count):
        flags = reader.byte()
        if flags & 0xC0:
            raise Unreadable("7z coder with reserved flags")
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
        raise Unreadable("7z folder without a packed stream")
    if packed_streams > 1:
        for _ in range(packed_streams):
            reader.number()
    return coders, outputs


def _bounded_streams(count: int) -> int:
    if not 0 < count <= _MAX_CODERS:
        raise Unreadable(f"7z coder with {count} streams")
    return count


def _skip_digests(reader: _Reader, count: int) -> None:
    if count > len(reader.data):
        raise Unreadable("7z digest count larger than the header")
    if reader.byte():  # all defined
        defined = count
    else:
        bits = reader.take((count + 7) // 8)
        defined = sum(byte.bit_count() for byte in bits)
    reader.take(4 * defined)


def _decoded_7z_header(data: bytes, streams: _Streams) -> bytes:
    """The header an encoded header stands for, unpacked from its single LZMA/LZMA2/Copy coder."""
    if not streams.folders or not streams.pack_sizes:
        raise Unreadable("7z encoded header without its stream")
    coders = streams.folders[0]
    if len(coders) != 1:
        raise Unreadable(f"7z header packed with {len(coders)} chained coders")
    start = _7Z_START_HEADER.size + streams.pack_position
    size = streams.pack_sizes[0]
    if start > len(data) or size > len(data) - start:
        raise Unreadable("7z packed header lies past the end of the data")
    packed = data[start : start + size]
    limit = min(streams.unpack_sizes[0][0], _MAX_7Z_HEADER)
    if coders[0].method == _7Z_COPY:
        return packed[:limit]
    try:
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[_lzma_filter(coders[0], limit)])
        return decompressor.decompress(packed, max_length=limit)
    except (lzma.LZMAError, ValueError) as problem:
        raise Unreadable(f"7z header does not unpack ({problem})") from None


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
    raise Unreadable(f"7z header packed with method {method.hex() or 'none'}")
