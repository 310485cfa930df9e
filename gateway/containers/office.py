"""Read an OLE compound file (CFB): whether an Office document in one is encrypted (an
EncryptionInfo stream for agile/standard encryption of OOXML, or the legacy Word, Excel and
PowerPoint flags), and every stream it holds, by path, for the caller to scan (Outlook
.msg attachments, embedded OLE objects, Office 97-2003 documents).

Every sector number, size and count is checked against the bytes present before use; sector
chains are followed with loop detection, and no two streams may share a sector, so reading
every stream costs time and memory linear in the data. Hostile input raises nothing but
Unreadable, and InspectionLimit when the streams add up to more than max_output bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from gateway.containers.base import InspectionLimit, Unreadable
from gateway.model import ContainerReport

_CFB_HEADER_SIZE = 512
_CFB_HEADER_DIFAT_ENTRIES = 109
_CFB_DIRECTORY_ENTRY = 128
_CFB_LAST_REGULAR_SECTOR = 0xFFFFFFFA
_CFB_FREE = 0xFFFFFFFF
_CFB_STORAGE, _CFB_STREAM, _CFB_ROOT = 1, 2, 5
_CFB_NO_ENTRY = 0xFFFFFFFF
# Outlook nests a storage per attached message; paths deeper than this would cost time
# quadratic in the depth to build
_CFB_MAX_DEPTH = 128
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
    left: int = _CFB_NO_ENTRY  # siblings in the red-black tree of the parent's children
    right: int = _CFB_NO_ENTRY
    child: int = _CFB_NO_ENTRY  # root of a storage's own tree of children


class _CompoundFile:
    """Enough of [MS-CFB] to list streams by path and read them, whole or their first bytes."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _CFB_HEADER_SIZE:
            raise Unreadable("compound file header truncated")
        shift = struct.unpack_from("<H", data, 0x1E)[0]
        if shift not in (9, 12):
            raise Unreadable(f"compound file sector shift {shift}")
        self.data = data
        self.sector_size = 1 << shift
        self.sector_count = len(data) // self.sector_size - 1  # the header fills sector -1
        self.mini_cutoff = struct.unpack_from("<L", data, 0x38)[0]
        self.fat_sectors = self._fat_sectors()
        self.claimed: set[tuple[int, int]] = set()
        self.mini_stream: bytes | None = None
        self.mini_fat = b""

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
        raise Unreadable("mini stream shorter than a stream in it")

    def stream_paths(self, entries: list[_DirectoryEntry]) -> list[tuple[str, _DirectoryEntry]]:
        """Every stream reachable from the root entry, with its storages' names as a path."""
        if not entries or entries[0].kind != _CFB_ROOT:
            raise Unreadable("compound file without a root entry")
        found: list[tuple[str, _DirectoryEntry]] = []
        visited = {0}
        pending = [(entries[0].child, "", 1)]  # (entry index, path of its storage, depth)
        while pending:
            index, parent, depth = pending.pop()
            if index == _CFB_NO_ENTRY:
                continue
            if index >= len(entries) or index in visited:
                raise Unreadable("compound file directory tree loops or leaves the directory")
            visited.add(index)
            entry = entries[index]
            path = f"{parent}/{entry.name}" if parent else entry.name
            if entry.kind == _CFB_STREAM:
                found.append((path, entry))
            elif entry.kind == _CFB_STORAGE:
                if depth >= _CFB_MAX_DEPTH:
                    raise InspectionLimit(f"compound file storages nested more than {_CFB_MAX_DEPTH} deep")
                pending.append((entry.child, path, depth + 1))
            pending.extend(((entry.right, parent, depth), (entry.left, parent, depth)))
        return found

    def read(self, entry: _DirectoryEntry, root: _DirectoryEntry) -> bytes:
        """A stream's bytes; each sector may belong to one stream only (see _claim)."""
        if entry.size == 0:
            return b""
        if entry.size >= self.mini_cutoff:
            return self._read_chain(entry.start, entry.size, self.sector_size, self._next, self._sector_bytes)
        mini_stream = self._mini_stream(root)
        mini_sectors = len(mini_stream) // _CFB_MINI_SECTOR

        def mini_bytes(sector: int) -> bytes:
            if sector >= mini_sectors:
                raise Unreadable("compound file mini sector outside the mini stream")
            return mini_stream[sector * _CFB_MINI_SECTOR : (sector + 1) * _CFB_MINI_SECTOR]

        return self._read_chain(entry.start, entry.size, _CFB_MINI_SECTOR, self._next_mini, mini_bytes)

    def _read_chain(
        self,
        sector: int,
        size: int,
        unit: int,
        following: Callable[[int], int],
        sector_bytes: Callable[[int], bytes],
    ) -> bytes:
        """size bytes from the chain of unit-sized sectors starting at sector, walking no more
        of it than needed."""
        if size > len(self.data):
            raise Unreadable("compound file stream larger than the file")
        pieces: list[bytes] = []
        for index in range(-(-size // unit)):
            if index:
                sector = following(sector)
            if sector > _CFB_LAST_REGULAR_SECTOR:
                raise Unreadable("compound file stream shorter than its size")
            self._claim(sector, unit)
            pieces.append(sector_bytes(sector))
        return b"".join(pieces)[:size]

    def _claim(self, sector: int, unit: int) -> None:
        # No sector belongs to two streams in a well-formed file; refusing a second claim
        # keeps hostile entries that share one long chain from costing more than the data.
        key = (unit, sector)
        if key in self.claimed:
            raise Unreadable("compound file sector chain loops or is shared by two streams")
        self.claimed.add(key)

    def _mini_stream(self, root: _DirectoryEntry) -> bytes:
        """The root entry's stream, which holds the small streams in 64-byte mini sectors."""
        if self.mini_stream is None:
            self.mini_stream = self._read_chain(
                root.start, root.size, self.sector_size, self._next, self._sector_bytes
            )
            self.mini_fat = self._read_mini_fat()
        return self.mini_stream

    def _read_mini_fat(self) -> bytes:
        first = struct.unpack_from("<L", self.data, 0x3C)[0]
        return b"".join(self._sector_bytes(sector) for sector in self._chain(first))

    def _next_mini(self, sector: int) -> int:
        if 4 * sector + 4 > len(self.mini_fat):
            raise Unreadable("compound file mini FAT too short")
        return int(struct.unpack_from("<L", self.mini_fat, 4 * sector)[0])

    def _sector_bytes(self, sector: int) -> bytes:
        offset = self._offset(sector)
        return self.data[offset : offset + self.sector_size]

    def _fat_sectors(self) -> list[int]:
        """The FAT's own sectors: 109 listed in the header, the rest in the DIFAT chain."""
        fat_sector_count = struct.unpack_from("<L", self.data, 0x2C)[0]
        listed = list(struct.unpack_from(f"<{_CFB_HEADER_DIFAT_ENTRIES}L", self.data, 0x4C))
        difat_sector = struct.unpack_from("<L", self.data, 0x44)[0]
        per_difat_sector = self.sector_size // 4 - 1
        seen: set[int] = set()
        while len(listed) < fat_sector_count and difat_sector <= _CFB_LAST_REGULAR_SECTOR:
            if difat_sector in seen:
                raise Unreadable("compound file DIFAT chain loops")
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
        while sector <= _CFB_LAST_REGULAR_SECTOR:
            if sector in seen or sector >= self.sector_count:
                raise Unreadable("compound file sector chain loops or leaves the data")
            seen.add(sector)
            chain.append(sector)
            sector = self._next(sector)
        return chain

    def _next(self, sector: int) -> int:
        """The sector after this one in its chain, from the FAT."""
        if sector >= self.sector_count:
            raise Unreadable("compound file sector chain loops or leaves the data")
        per_fat_sector = self.sector_size // 4
        fat_index = sector // per_fat_sector
        if fat_index >= len(self.fat_sectors):
            raise Unreadable("compound file FAT too short")
        entry_offset = self._offset(self.fat_sectors[fat_index]) + 4 * (sector % per_fat_sector)
        return int(struct.unpack_from("<L", self.data, entry_offset)[0])

    def _offset(self, sector: int) -> int:
        if sector >= self.sector_count:
            raise Unreadable("compound file sector outside the data")
        return (sector + 1) * self.sector_size

    def _entry(self, offset: int) -> _DirectoryEntry:
        name_bytes = struct.unpack_from("<H", self.data, offset + 0x40)[0]
        raw_name = self.data[offset : offset + min(max(name_bytes - 2, 0), 62)]
        kind = self.data[offset + 0x42]
        left, right, child = struct.unpack_from("<3L", self.data, offset + 0x44)
        start, size = struct.unpack_from("<LQ", self.data, offset + 0x74)
        if self.sector_size == 512:
            size &= 0xFFFFFFFF  # version 3 files may leave garbage in the high half
        name = raw_name.decode("utf-16-le", "replace")
        return _DirectoryEntry(name, kind, start, size, left, right, child)


def inspect_cfb(data: bytes) -> ContainerReport:
    try:
        compound = _CompoundFile(data)
        entries = compound.entries()
    except struct.error:
        raise Unreadable("compound file structure runs past the data") from None
    streams = {entry.name.casefold(): entry for entry in entries if entry.kind == _CFB_STREAM}
    if "encryptioninfo" in streams:
        reason = "password-protected Office document (EncryptionInfo stream)"
        return ContainerReport("office", True, reason)
    root = entries[0] if entries else None
    legacy = _legacy_office_encryption(compound, streams, root) if root else None
    if legacy:
        return ContainerReport("office", True, legacy)
    return ContainerReport("office", False, "compound file without encryption markers")


def compound_streams(data: bytes, *, max_output: int) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every stream of the compound file data, storages' names joined by "/"
    ("__attach_version1.0_#00000000/__substg1.0_37010102"); names keep their control
    characters ("\x01Ole10Native"). Raises Unreadable for a broken structure, InspectionLimit
    before the streams together would pass max_output bytes or for storages nested more than
    _CFB_MAX_DEPTH deep."""
    try:
        compound = _CompoundFile(data)
        entries = compound.entries()
        streams = compound.stream_paths(entries)
    except struct.error:
        raise Unreadable("compound file structure runs past the data") from None
    budget = max(max_output, 0)
    for path, entry in streams:
        if entry.size > budget and entry.size <= len(data):
            raise InspectionLimit(f"compound file streams add up to more than {max_output} bytes")
        try:
            content = compound.read(entry, entries[0])
        except struct.error:
            raise Unreadable("compound file structure runs past the data") from None
        budget -= len(content)
        yield path, content


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
