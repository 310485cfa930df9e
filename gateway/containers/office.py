"""Whether an Office document in an OLE compound file (CFB) is encrypted: an
EncryptionInfo stream (agile/standard encryption of OOXML), or the legacy Word, Excel and
PowerPoint flags."""

from __future__ import annotations

import struct
from typing import NamedTuple

from gateway.containers.base import Unreadable
from gateway.model import ContainerReport

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
            raise Unreadable("compound file header truncated")
        shift = struct.unpack_from("<H", data, 0x1E)[0]
        if shift not in (9, 12):
            raise Unreadable(f"compound file sector shift {shift}")
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
        raise Unreadable("mini stream shorter than a stream in it")

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
        per_fat_sector = self.sector_size // 4
        while sector <= _CFB_LAST_REGULAR_SECTOR:
            if sector in seen or sector >= self.sector_count:
                raise Unreadable("compound file sector chain loops or leaves the data")
            seen.add(sector)
            chain.append(sector)
            fat_index = sector // per_fat_sector
            if fat_index >= len(self.fat_sectors):
                raise Unreadable("compound file FAT too short")
            entry_offset = self._offset(self.fat_sectors[fat_index]) + 4 * (sector % per_fat_sector)
            sector = struct.unpack_from("<L", self.data, entry_offset)[0]
        return chain

    def _offset(self, sector: int) -> int:
        if sector >= self.sector_count:
            raise Unreadable("compound file sector outside the data")
        return (sector + 1) * self.sector_size

    def _entry(self, offset: int) -> _DirectoryEntry:
        name_bytes = struct.unpack_from("<H", self.data, offset + 0x40)[0]
        raw_name = self.data[offset : offset + min(max(name_bytes - 2, 0), 62)]
        kind = self.data[offset + 0x42]
        start, size = struct.unpack_from("<LQ", self.data, offset + 0x74)
        if self.sector_size == 512:
            size &= 0xFFFFFFFF  # version 3 files may leave garbage in the high half
        return _DirectoryEntry(raw_name.decode("utf-16-le", "replace"), kind, start, size)


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
