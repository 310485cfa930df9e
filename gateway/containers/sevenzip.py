"""Whether a 7z archive is encrypted: its coders list AES (in a header that 7-Zip
usually stores LZMA-compressed, unpacked here within a bound); and, for an archive
without AES, the unpacked contents of each folder, within a bound.

inspect_7z unpacks nothing but the header. unpack_7z unpacks the folders whose coder
chain the standard library can decode (Copy, LZMA, LZMA2, Deflate or BZip2, behind up to
three branch converters or Delta filters), stopping at max_output bytes. Every claimed
offset, size and count is checked against the bytes present, no allocation follows a
claimed size, and hostile input raises nothing but Unreadable (inspect_7z), or
Unreadable, Unsupported and InspectionLimit (unpack_7z).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from typing import NamedTuple

from gateway.containers.base import InspectionLimit, Unreadable, Unsupported
from gateway.model import ContainerReport

_7Z_START_HEADER = struct.Struct("<6s2BLQQL")
_7Z_AES = b"\x06\xf1\x07\x01"
_7Z_COPY = b"\x00"
_7Z_LZMA = b"\x03\x01\x01"
_7Z_LZMA2 = b"\x21"
_7Z_DEFLATE = b"\x04\x01\x08"
_7Z_BZIP2 = b"\x04\x02\x02"
_7Z_DELTA = b"\x03"
# coders that read a packed stream; branch converters and Delta may only sit in front of them
_7Z_STREAM_DECODERS = frozenset({_7Z_COPY, _7Z_LZMA, _7Z_LZMA2, _7Z_DEFLATE, _7Z_BZIP2})
# branch converters: 7-Zip's short IDs and the older long ones, with liblzma's filter for each
_7Z_BRANCH_FILTERS = {
    b"\x04": ("BCJ", lzma.FILTER_X86),
    b"\x03\x03\x01\x03": ("BCJ", lzma.FILTER_X86),
    b"\x05": ("PPC", lzma.FILTER_POWERPC),
    b"\x03\x03\x02\x05": ("PPC", lzma.FILTER_POWERPC),
    b"\x06": ("IA64", lzma.FILTER_IA64),
    b"\x03\x03\x04\x01": ("IA64", lzma.FILTER_IA64),
    b"\x07": ("ARM", lzma.FILTER_ARM),
    b"\x03\x03\x05\x01": ("ARM", lzma.FILTER_ARM),
    b"\x08": ("ARMT", lzma.FILTER_ARMTHUMB),
    b"\x03\x03\x07\x01": ("ARMT", lzma.FILTER_ARMTHUMB),
    b"\x09": ("SPARC", lzma.FILTER_SPARC),
    b"\x03\x03\x08\x05": ("SPARC", lzma.FILTER_SPARC),
}
# names for the log of coders that are read but cannot be unpacked here (7-Zip's Methods.txt)
_7Z_OTHER_CODERS = {
    _7Z_AES: "AES",
    b"\x03\x03\x01\x1b": "BCJ2",
    b"\x03\x04\x01": "PPMd",
    b"\x04\x01\x09": "Deflate64",
    b"\x0a": "ARM64",
    b"\x0b": "RISCV",
    b"\x03\x03\x03\x01": "Alpha",
    b"\x03\x03\x06\x05": "M68",
    b"\x02\x03\x02": "Swap2",
    b"\x02\x03\x04": "Swap4",
    b"\x04\x01\x0e": "LZMA (zip)",
    b"\x04\x01\x5f": "xz",
    b"\x04\x01\x62": "PPMd (zip)",
    b"\x04\xf7\x11\x01": "zstd",
    b"\x04\xf7\x11\x02": "Brotli",
    b"\x04\xf7\x11\x04": "LZ4",
    b"\x04\xf7\x11\x05": "LZ5",
    b"\x04\xf7\x11\x06": "Lizard",
}
_LIBLZMA_MAX_FILTERS = 4  # LZMA_FILTERS_MAX: the chain, LZMA included
_LZMA2_STORED_RESET, _LZMA2_STORED, _LZMA2_END, _LZMA2_CHUNK = 0x01, 0x02, b"\x00", 1 << 16
# property IDs of the 7z header (7zFormat.txt)
_END, _HEADER, _ARCHIVE_PROPERTIES, _ADDITIONAL_STREAMS, _MAIN_STREAMS = 0x00, 0x01, 0x02, 0x03, 0x04
_PACK_INFO, _UNPACK_INFO, _SIZE, _CRC, _FOLDER, _UNPACK_SIZE = 0x06, 0x07, 0x09, 0x0A, 0x0B, 0x0C
_ENCODED_HEADER = 0x17
_MAX_7Z_HEADER = 1 << 20  # a header listing tens of thousands of files still fits
_MAX_7Z_HEADER_LAYERS = 4
_MAX_CODERS = 64  # 7-Zip's own limit per folder
# back-references reach no further than what was unpacked; the margin covers the few bytes
# a branch filter holds back before it passes them on
_DICTIONARY_MARGIN = 4096


class _Coder(NamedTuple):
    method: bytes
    properties: bytes
    inputs: int = 1
    outputs: int = 1


class _Folder(NamedTuple):
    coders: list[_Coder]
    bind_pairs: list[tuple[int, int]]  # (coder input index, coder output index feeding it)
    packed_inputs: list[int]  # coder input indices fed by the folder's pack streams, in order


class _Streams(NamedTuple):
    pack_position: int
    pack_sizes: list[int]
    folders: list[_Folder]
    unpack_sizes: list[list[int]]  # per folder, one per coder output


class _HeaderEncrypted(Exception):
    """An encoded header's own coders include AES: nothing past it can be read."""


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
    header = _next_header(data)
    if header is None:
        return ContainerReport("7z", False, "empty 7z archive")
    try:
        header = _plain_header(data, header)
    except _HeaderEncrypted:
        return ContainerReport("7z", True, "7z header encrypted with AES (file names hidden)")
    return _plain_header_verdict(_Reader(header))


def unpack_7z(data: bytes, *, max_output: int) -> list[bytes]:
    """The unpacked stream of each folder (its files back to back), in archive order.

    Raises Unsupported for AES or a coder chain the standard library cannot decode (checked
    for every folder before any is unpacked), InspectionLimit when the folders together
    unpack to more than max_output bytes, and Unreadable for a broken structure or stream."""
    header = _next_header(data)
    if header is None:
        return []
    try:
        header = _plain_header(data, header)
    except _HeaderEncrypted:
        raise Unsupported("7z coder AES (header encrypted)") from None
    reader = _Reader(header)
    streams = _read_plain_header(reader)
    if _7Z_AES in reader.methods:
        raise Unsupported("7z coder AES (encrypted)")
    if streams is None:
        return []
    return _unpack_folders(data, streams, max_output)


def _next_header(data: bytes) -> bytes | None:
    """The header the start header points at, CRC-checked; None for an empty archive."""
    if len(data) < _7Z_START_HEADER.size:
        raise Unreadable("7z start header truncated")
    fields = _7Z_START_HEADER.unpack_from(data)
    start_crc, next_offset, next_size, next_crc = fields[3:]
    if zlib.crc32(data[12:32]) != start_crc:
        raise Unreadable("7z start header CRC mismatch")
    if next_size == 0:
        return None
    header_start = _7Z_START_HEADER.size + next_offset
    if next_size > len(data) - header_start:
        raise Unreadable("7z header lies past the end of the data (truncated?)")
    header = data[header_start : header_start + next_size]
    if zlib.crc32(header) != next_crc:
        raise Unreadable("7z header CRC mismatch")
    return header


def _plain_header(data: bytes, header: bytes) -> bytes:
    """The plain header behind a few layers of encoded header; _HeaderEncrypted if one is AES."""
    for _ in range(_MAX_7Z_HEADER_LAYERS):
        if header[:1] != bytes([_ENCODED_HEADER]):
            return header
        reader = _Reader(header[1:])
        streams = _read_streams(reader)
        if _7Z_AES in reader.methods:
            raise _HeaderEncrypted
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


def _read_plain_header(reader: _Reader) -> _Streams | None:
    """The main streams (the folders holding the files' data), None if the archive has none."""
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
        return _read_streams(reader)  # the folders' coders: all that is needed, the rest is names
    return None


def _read_streams(reader: _Reader) -> _Streams:
    """PackInfo and UnpackInfo of a StreamsInfo record; stops before any SubStreamsInfo."""
    property_id = reader.byte()
    pack_position, pack_sizes = 0, []
    if property_id == _PACK_INFO:
        pack_position, pack_sizes = _read_pack_info(reader)
        property_id = reader.byte()
    folders: list[_Folder] = []
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


def _read_unpack_info(reader: _Reader) -> tuple[list[_Folder], list[list[int]]]:
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
    return [folder for folder, _ in folders], unpack_sizes


def _read_folder(reader: _Reader) -> tuple[_Folder, int]:
    """The folder's coders, how they are bound, and its number of output streams."""
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
        coder_inputs = coder_outputs = 1
        if flags & 0x10:
            coder_inputs = _bounded_streams(reader.number())
            coder_outputs = _bounded_streams(reader.number())
        inputs, outputs = inputs + coder_inputs, outputs + coder_outputs
        properties = reader.take(reader.count()) if flags & 0x20 else b""
        coders.append(_Coder(method, properties, coder_inputs, coder_outputs))
    bind_pairs = [(reader.number(), reader.number()) for _ in range(outputs - 1)]
    packed_streams = inputs - len(bind_pairs)
    if packed_streams < 1:
        raise Unreadable("7z folder without a packed stream")
    if packed_streams > 1:
        packed_inputs = [reader.number() for _ in range(packed_streams)]
    else:  # implied: the one input no coder output feeds
        bound = {input_index for input_index, _ in bind_pairs}
        packed_inputs = [next((index for index in range(inputs) if index not in bound), -1)]
    return _Folder(coders, bind_pairs, packed_inputs), outputs


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
    coders = streams.folders[0].coders
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
    filter_spec = _lzma_filter(coders[0], limit)
    if filter_spec is None:
        raise Unreadable(f"7z header packed with method {coders[0].method.hex() or 'none'}")
    try:
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[filter_spec])
        return decompressor.decompress(packed, max_length=limit)
    except (lzma.LZMAError, ValueError) as problem:
        raise Unreadable(f"7z header does not unpack ({problem})") from None


def _lzma_filter(coder: _Coder, limit: int) -> dict[str, int] | None:
    """liblzma's filter for an LZMA or LZMA2 coder with valid properties, else None."""
    # The dictionary is allocated up front at the size the archive claims; capped at what
    # will be unpacked, since no back-reference can reach further than that.
    dictionary_cap = max(4096, limit)
    method, properties = coder.method, coder.properties
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
    return None


# --- unpacking the folders ---------------------------------------------------------------


class _Plan(NamedTuple):
    """How one folder unpacks: its coders from the final output back to the packed stream."""

    chain: list[_Coder]
    packed: bytes
    size: int  # what the folder claims to unpack to


def _unpack_folders(data: bytes, streams: _Streams, max_output: int) -> list[bytes]:
    plans = _plans(data, streams)  # all refusals (Unsupported, Unreadable) before any work
    outputs: list[bytes] = []
    budget = max(max_output, 0)
    for plan in plans:
        unpacked = _unpack_folder(plan, min(plan.size, budget + 1))
        if len(unpacked) > budget:
            raise InspectionLimit(f"7z archive expands beyond {max_output} bytes")
        if len(unpacked) < plan.size:
            raise Unreadable("7z folder unpacks to fewer bytes than it claims (truncated?)")
        budget -= len(unpacked)
        outputs.append(unpacked)
    return outputs


def _plans(data: bytes, streams: _Streams) -> list[_Plan]:
    start = _7Z_START_HEADER.size + streams.pack_position
    if start > len(data):
        raise Unreadable("7z packed streams lie past the end of the data")
    packed_ranges: list[tuple[int, int]] = []
    for size in streams.pack_sizes:
        if size > len(data) - start:
            raise Unreadable("7z packed stream lies past the end of the data (truncated?)")
        packed_ranges.append((start, start + size))
        start += size
    plans: list[_Plan] = []
    next_pack_stream = 0
    for folder, sizes in zip(streams.folders, streams.unpack_sizes):
        chain, final_output = _coder_chain(folder)
        if next_pack_stream >= len(packed_ranges):
            raise Unreadable("7z folder without its packed stream")
        begin, end = packed_ranges[next_pack_stream]
        next_pack_stream += len(folder.packed_inputs)
        plans.append(_Plan(chain, data[begin:end], sizes[final_output]))
    return plans


def _coder_chain(folder: _Folder) -> tuple[list[_Coder], int]:
    """The folder's coders from the one giving its output back to the one reading the packed
    stream, and the index of the folder's output; Unsupported unless every coder is one this
    module decodes and each has one input and one output."""
    for coder in folder.coders:
        if not _decodable(coder.method):
            name = _7Z_OTHER_CODERS.get(coder.method) or f"method {coder.method.hex() or 'none'}"
            raise Unsupported(f"7z coder {name}")
    if any(coder.inputs != 1 or coder.outputs != 1 for coder in folder.coders):
        raise Unreadable("7z coder with more than one stream where 7-Zip writes one")
    # every coder has one input and one output, so coder, input and output indices coincide
    count = len(folder.coders)
    feeder: dict[int, int] = {}  # coder index -> index of the coder whose output feeds it
    for input_index, output_index in folder.bind_pairs:
        if not (0 <= input_index < count and 0 <= output_index < count) or input_index in feeder:
            raise Unreadable("7z folder binds coders that are not there")
        feeder[input_index] = output_index
    unbound_outputs = set(range(count)) - set(feeder.values())
    if len(unbound_outputs) != 1 or folder.packed_inputs[:1] == [-1]:
        raise Unreadable("7z folder coders do not form a chain")
    final_output = unbound_outputs.pop()
    order = [final_output]
    while order[-1] in feeder:
        order.append(feeder[order[-1]])
        if len(order) > count:
            raise Unreadable("7z folder coders bound in a loop")
    if len(order) != count or folder.packed_inputs != [order[-1]]:
        raise Unreadable("7z folder coders do not form a chain")
    chain = [folder.coders[index] for index in order]
    *filters, first = chain
    if first.method not in _7Z_STREAM_DECODERS or any(c.method in _7Z_STREAM_DECODERS for c in filters):
        raise Unsupported(f"7z coder chain {' + '.join(_coder_name(coder) for coder in chain)}")
    if len(filters) >= _LIBLZMA_MAX_FILTERS:
        raise Unsupported(f"7z coder chain {' + '.join(_coder_name(coder) for coder in chain)} (too long)")
    for coder in filters:
        _filter_spec(coder)  # refuse bad properties before any folder is unpacked
    return chain, final_output


def _decodable(method: bytes) -> bool:
    return method in _7Z_STREAM_DECODERS or method == _7Z_DELTA or method in _7Z_BRANCH_FILTERS


def _unpack_folder(plan: _Plan, want: int) -> bytes:
    """At most want bytes of the folder's output (a chain _coder_chain has accepted)."""
    if want <= 0:
        return b""  # and no decoder is asked for 0 bytes, which zlib takes for "no limit"
    *filters, first = plan.chain
    if first.method in (_7Z_LZMA, _7Z_LZMA2):
        unpacked = _unpack_lzma(first, plan.packed, want)
    elif first.method == _7Z_DEFLATE:
        unpacked = _inflate(plan.packed, want)
    elif first.method == _7Z_BZIP2:
        unpacked = _unbzip2(plan.packed, want)
    else:
        unpacked = plan.packed[:want]  # Copy
    return _unfilter(filters, unpacked) if filters else unpacked


def _coder_name(coder: _Coder) -> str:
    names = {_7Z_COPY: "Copy", _7Z_LZMA: "LZMA", _7Z_LZMA2: "LZMA2", _7Z_DEFLATE: "Deflate"}
    names |= {_7Z_BZIP2: "BZip2", _7Z_DELTA: "Delta"}
    if coder.method in _7Z_BRANCH_FILTERS:
        return _7Z_BRANCH_FILTERS[coder.method][0]
    return names.get(coder.method) or _7Z_OTHER_CODERS.get(coder.method) or coder.method.hex()


def _unpack_lzma(coder: _Coder, packed: bytes, want: int) -> bytes:
    lzma_spec = _lzma_filter(coder, want + _DICTIONARY_MARGIN)
    if lzma_spec is None:
        raise Unreadable(f"7z {_coder_name(coder)} coder with invalid properties")
    try:
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma_spec])
    except (lzma.LZMAError, ValueError) as problem:
        # well-formed, but options liblzma does not take (an LZMA lc+lp above 4, say)
        raise Unsupported(f"7z coder options liblzma cannot decode ({problem})") from None
    try:
        pieces = [decompressor.decompress(packed, max_length=want)]
        produced = len(pieces[0])
        while produced < want and not decompressor.eof and not decompressor.needs_input:
            piece = decompressor.decompress(b"", max_length=want - produced)
            if not piece:
                break
            pieces.append(piece)
            produced += len(piece)
    except lzma.LZMAError as problem:
        raise Unreadable(f"7z folder does not unpack ({problem})") from None
    return b"".join(pieces)


def _unfilter(filters: list[_Coder], filtered: bytes) -> bytes:
    """Undo branch converters and Delta, which keep the length of what they convert.

    liblzma runs them only in front of an LZMA or LZMA2 decoder, and flushes their last
    bytes only where that stream marks its end, which a 7z LZMA stream need not do: so
    the bytes are handed to them as LZMA2 uncompressed chunks followed by the end marker."""
    specs = [_filter_spec(coder) for coder in filters]
    chunks = [
        bytes([_LZMA2_STORED_RESET if start == 0 else _LZMA2_STORED])
        + (len(chunk) - 1).to_bytes(2, "big")
        + chunk
        for start in range(0, len(filtered), _LZMA2_CHUNK)
        for chunk in (filtered[start : start + _LZMA2_CHUNK],)
    ]
    try:
        decompressor = lzma.LZMADecompressor(
            lzma.FORMAT_RAW, filters=[*specs, {"id": lzma.FILTER_LZMA2, "dict_size": 4096}]
        )
    except (lzma.LZMAError, ValueError) as problem:
        raise Unsupported(f"7z filter options liblzma cannot decode ({problem})") from None
    try:
        return decompressor.decompress(b"".join(chunks) + _LZMA2_END)
    except lzma.LZMAError as problem:
        raise Unreadable(f"7z filter does not unpack ({problem})") from None


def _filter_spec(coder: _Coder) -> dict[str, int]:
    """liblzma's filter for a branch converter or Delta in front of LZMA/LZMA2."""
    if coder.method == _7Z_DELTA:
        if len(coder.properties) != 1:
            raise Unreadable("7z Delta coder with invalid properties")
        return {"id": lzma.FILTER_DELTA, "dist": coder.properties[0] + 1}
    name, filter_id = _7Z_BRANCH_FILTERS[coder.method]
    if not coder.properties:
        return {"id": filter_id}
    if len(coder.properties) == 4:
        return {"id": filter_id, "start_offset": int.from_bytes(coder.properties, "little")}
    raise Unreadable(f"7z {name} coder with invalid properties")


def _inflate(packed: bytes, want: int) -> bytes:
    inflater = zlib.decompressobj(-15)
    try:
        pieces = [inflater.decompress(packed, want)]
        produced = len(pieces[0])
        while produced < want and inflater.unconsumed_tail and not inflater.eof:
            tail = inflater.unconsumed_tail
            piece = inflater.decompress(tail, want - produced)
            if not piece and len(inflater.unconsumed_tail) >= len(tail):
                break
            pieces.append(piece)
            produced += len(piece)
    except zlib.error as problem:
        raise Unreadable(f"7z folder does not inflate ({problem})") from None
    return b"".join(pieces)


def _unbzip2(packed: bytes, want: int) -> bytes:
    """BZip2 streams back to back (7-Zip's multithreaded encoder may write several)."""
    pieces: list[bytes] = []
    produced = 0
    remaining = packed
    try:
        while remaining and produced < want:
            decompressor = bz2.BZ2Decompressor()
            piece = decompressor.decompress(remaining, max_length=want - produced)
            while True:
                pieces.append(piece)
                produced += len(piece)
                if produced >= want or decompressor.eof or decompressor.needs_input or not piece:
                    break
                piece = decompressor.decompress(b"", max_length=want - produced)
            if not decompressor.eof or len(decompressor.unused_data) >= len(remaining):
                break
            remaining = decompressor.unused_data
    except (OSError, ValueError, EOFError) as problem:
        raise Unreadable(f"7z folder does not unpack as BZip2 ({problem})") from None
    return b"".join(pieces)
