"""Read a ZIP's entries for extraction and check everything that needs no inflating.

The structure comes from gateway.containers.zipinspect (verdict, decoded member names) and pyzipper's
central-directory reader (offsets, CRCs, AES fields); the two must agree or the archive is
refused. Member count, declared sizes and ratios, entry layout (bounds, overlaps), methods and
names are all checked here, before a byte is inflated. Nothing here touches the file system.

The archive is `ZipData`: bytes, or anything read the same way (len, slices, find, rfind and
`file()`), such as a stored blob read in place (gateway.store.blobs.BlobView), so an archive is
never held whole to be opened.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyzipper
from pyzipper.zipfile_aes import AESZipInfo

from gateway.containers.zipinspect import LOCAL_SIGNATURE, inspect_zip
from gateway.model import ZipVerdict

_MIB = 1024 * 1024
_LOCAL = struct.Struct("<4s5H3L2H")
FLAG_ENCRYPTED = 0x0001
FLAG_DATA_DESCRIPTOR = 0x0008
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_UTF8_NAME = 0x0800
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
AES_SALT_LENGTHS = {1: 8, 2: 12, 3: 16}  # WinZip AES strength → salt length (= key length / 2)
AES_MAC_LENGTH = 10
ZIPCRYPTO_HEADER_LENGTH = 12
_PARSER_ERRORS = (
    pyzipper.BadZipFile,  # also the LargeZipFile family
    ValueError,  # UnicodeDecodeError of a name, negative seeks
    OSError,
    EOFError,
    NotImplementedError,  # "zip file version" too new
    struct.error,
    KeyError,
    IndexError,
    OverflowError,
)


class ReadInPlace(Protocol):
    """An archive read where it lies: only the bytes asked for are read."""

    def __len__(self) -> int: ...
    def __getitem__(self, key: slice) -> bytes: ...
    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int: ...
    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int: ...
    def file(self) -> BinaryIO: ...


ZipData = bytes | ReadInPlace


def as_file(data: ZipData) -> BinaryIO:
    """A seekable file over data, for pyzipper."""
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data.file()


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on opening one archive; the caller takes them from configuration."""

    max_members: int = 1000  # entries, counted over every nesting level together
    max_total_bytes: int = 1024 * _MIB  # inflated bytes, every level together
    max_member_bytes: int = 1024 * _MIB  # one member alone
    max_ratio: int = 200  # declared uncompressed / compressed size of one member ...
    ratio_floor_bytes: int = 1 * _MIB  # ... checked for members declaring at least this much
    max_depth: int = 2  # levels of ZIP inside the ZIP that are opened too


class ExtractRefused(Exception):
    """The archive is not opened; reason is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ZipEntry:
    """One central-directory entry, cross-checked against its local header."""

    name: str  # decoded by zipinspect (UTF-8 flag, Unicode Path field, CP932, CP437)
    info: AESZipInfo
    header_start: int
    data_start: int
    local_name: bytes  # the name bytes in the local header

    @property
    def data_end(self) -> int:
        return self.data_start + self.info.compress_size

    @property
    def encrypted(self) -> bool:
        return bool(self.info.flag_bits & FLAG_ENCRYPTED)

    @property
    def is_aes(self) -> bool:
        return self.info.wz_aes_version is not None

    @property
    def is_dir(self) -> bool:
        return self.name.endswith(("/", "\\"))


@dataclass
class Budget:
    """What is left of the limits while one extraction runs, over all nesting levels."""

    members: int
    total_bytes: int


def read_directory(data: ZipData, limits: ExtractLimits, budget: Budget) -> list[ZipEntry]:
    """The entries of data, after every check that needs no inflating, in the order of the
    central directory."""
    report = inspect_zip(data, max_members=budget.members)
    if report.reason.startswith("too many entries"):
        raise ExtractRefused("too many members")
    if report.reason.startswith("overlapping entries"):
        raise ExtractRefused("overlapping entries (zip bomb)")
    if report.verdict in (ZipVerdict.NOT_ZIP, ZipVerdict.CORRUPT_ZIP) or report.reason:
        raise ExtractRefused("corrupt")
    infos, directory_start = _central_records(data)
    if len(infos) != len(report.members):
        raise ExtractRefused("corrupt")  # the two readers disagree: do not guess which is right
    for member, info in zip(report.members, infos, strict=True):
        sizes = (member.compressed_size, member.uncompressed_size)
        if sizes != (info.compress_size, info.file_size) or member.encrypted != bool(
            info.flag_bits & FLAG_ENCRYPTED
        ):
            raise ExtractRefused("corrupt")
    pairs = zip(report.members, infos, strict=True)
    entries = [_entry(data, member.name, info) for member, info in pairs]
    _check_layout(entries, directory_start)
    _check_names(entries)
    if any(entry.local_name != _raw_name(entry.info) for entry in entries):
        raise ExtractRefused("corrupt")  # another reader would show the local name: deception
    _check_sizes(entries, limits, budget)
    _check_methods(entries)
    return entries


def _central_records(data: ZipData) -> tuple[list[AESZipInfo], int]:
    try:
        with pyzipper.AESZipFile(as_file(data)) as archive:
            return archive.infolist(), archive.start_dir
    except _PARSER_ERRORS:  # what pyzipper's reader raises on hostile bytes: all mean "corrupt"
        raise ExtractRefused("corrupt") from None


def _entry(data: ZipData, name: str, info: AESZipInfo) -> ZipEntry:
    """The entry with where its data starts, read from its local header."""
    start = info.header_offset
    if start < 0 or start + _LOCAL.size > len(data):
        raise ExtractRefused("corrupt")
    fields = _LOCAL.unpack(data[start : start + _LOCAL.size])
    if fields[0] != LOCAL_SIGNATURE:
        raise ExtractRefused("corrupt")
    name_end = start + _LOCAL.size + fields[9]
    return ZipEntry(name, info, start, name_end + fields[10], data[start + _LOCAL.size : name_end])


def _raw_name(info: AESZipInfo) -> bytes:
    """The name bytes as stored; pyzipper decoded them as UTF-8 (flag bit 11) or lossless CP437."""
    encoding = "utf-8" if info.flag_bits & _FLAG_UTF8_NAME else "cp437"
    return info.orig_filename.encode(encoding)


def _check_layout(entries: list[ZipEntry], directory_start: int) -> None:
    """Each entry's [local header, end of data) lies before the directory, none overlapping:
    the overlapping-entry bomb makes many entries inflate the same bytes."""
    previous_end = 0
    for entry in sorted(entries, key=lambda e: e.header_start):
        if entry.data_end > directory_start:
            raise ExtractRefused("corrupt")
        if entry.header_start < previous_end:
            raise ExtractRefused("overlapping entries (zip bomb)")
        previous_end = entry.data_end


def _check_names(entries: list[ZipEntry]) -> None:
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ExtractRefused("duplicate names")


def _check_sizes(entries: list[ZipEntry], limits: ExtractLimits, budget: Budget) -> None:
    files = [entry.info for entry in entries if not entry.is_dir]
    if any(info.file_size > limits.max_member_bytes for info in files):
        raise ExtractRefused("member size over limit")
    if sum(info.file_size for info in files) > budget.total_bytes:
        raise ExtractRefused("total size over limit")
    for info in files:
        if info.file_size >= limits.ratio_floor_bytes and (
            info.file_size > limits.max_ratio * info.compress_size
        ):
            raise ExtractRefused("compression ratio over limit (zip bomb)")


def _check_methods(entries: list[ZipEntry]) -> None:
    for entry in entries:
        if entry.is_dir:
            continue
        if entry.info.flag_bits & _FLAG_STRONG_ENCRYPTION:
            raise ExtractRefused("unsupported encryption")
        if entry.info.compress_type not in (STORED, DEFLATED, BZIP2, LZMA):
            raise ExtractRefused(f"unsupported compression method {entry.info.compress_type}")
        if entry.encrypted and entry.info.compress_size < _encryption_overhead(entry):
            raise ExtractRefused("corrupt")


def _encryption_overhead(entry: ZipEntry) -> int:
    """Bytes of an encrypted member that are not its data: salt, verifier, MAC; or the header."""
    if not entry.is_aes:
        return ZIPCRYPTO_HEADER_LENGTH
    if entry.info.wz_aes_strength not in AES_SALT_LENGTHS:
        raise ExtractRefused("corrupt")
    return AES_SALT_LENGTHS[entry.info.wz_aes_strength] + 2 + AES_MAC_LENGTH


def encrypted_files(entries: list[ZipEntry]) -> list[ZipEntry]:
    return [entry for entry in entries if entry.encrypted and not entry.is_dir]
