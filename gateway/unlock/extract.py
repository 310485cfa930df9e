"""Prove a ZIP password and decrypt a ZIP's members into memory, within limits that stop zip bombs.

The structure comes from gateway.zipinspect (verdict, decoded member names) and pyzipper's
central-directory reader (offsets, CRCs, AES fields); the two must agree or the archive is refused.
Member count, declared sizes and ratios, entry layout (bounds, overlaps) and names are all checked
before a byte is inflated, and inflation streams under a running counter that stops at the declared
size even when the headers lie. Member names become display names only: nothing here touches the
file system. Synchronous and CPU-bound: callers run it off the event loop.
"""

from __future__ import annotations

import bz2
import hashlib
import hmac
import io
import lzma
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyzipper
from pyzipper.zipfile_aes import AESZipDecrypter, AESZipInfo

from gateway.filenames import display_safe
from gateway.model import ZipVerdict
from gateway.zipinspect import LOCAL_SIGNATURE, inspect_zip

_MIB = 1024 * 1024
_CHUNK = 64 * 1024  # compressed bytes decrypted per step, and most bytes inflated per step
_LOCAL = struct.Struct("<4s5H3L2H")
_FLAG_ENCRYPTED = 0x0001
_FLAG_DATA_DESCRIPTOR = 0x0008
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_UTF8_NAME = 0x0800
_STORED, _DEFLATED, _BZIP2, _LZMA = 0, 8, 12, 14
_AES_SALT_LENGTHS = {1: 8, 2: 12, 3: 16}  # WinZip AES strength → salt length (= key length / 2)
_AES_MAC_LENGTH = 10
_ZIPCRYPTO_HEADER_LENGTH = 12
_MAX_DISPLAY_NAME = 255
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
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


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on opening one archive; the caller takes them from configuration."""

    max_members: int = 1000  # entries, counted over every nesting level together
    max_total_bytes: int = 1024 * _MIB  # inflated bytes, every level together
    max_member_bytes: int = 1024 * _MIB  # one member alone
    max_ratio: int = 200  # declared uncompressed / compressed size of one member ...
    ratio_floor_bytes: int = 1 * _MIB  # ... checked for members declaring at least this much
    max_depth: int = 2  # levels of ZIP inside the ZIP that are opened too


@dataclass(frozen=True)
class ExtractedFile:
    display_name: str  # "folder/name.ext": a display string, never joined to a path
    data: bytes
    size: int
    sha256: str


@dataclass(frozen=True)
class ExtractResult:
    files: tuple[ExtractedFile, ...]
    notes: tuple[str, ...]  # e.g. "double ZIP: inner.zip" (an encrypted ZIP inside, kept whole)


class ExtractRefused(Exception):
    """The archive is not opened; reason is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Entry:
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
        return bool(self.info.flag_bits & _FLAG_ENCRYPTED)

    @property
    def is_aes(self) -> bool:
        return self.info.wz_aes_version is not None

    @property
    def is_dir(self) -> bool:
        return self.name.endswith(("/", "\\"))


@dataclass
class _Budget:
    """What is left of the limits while one extraction runs, over all nesting levels."""

    members: int
    total_bytes: int


def prove_password(data: bytes, password: str, limits: ExtractLimits = ExtractLimits()) -> bool:
    """True only if password opens every encrypted member: WinZip AES password verifier and
    HMAC-SHA1 authentication code, ZipCrypto check byte and CRC-32 of the inflated data.

    False for a wrong password, for a plain archive (nothing to prove) and for an archive that
    extract_members would refuse before inflating (bomb, corrupt): never an exception.
    """
    try:
        entries = _read_directory(data, limits, _Budget(limits.max_members, limits.max_total_bytes))
    except ExtractRefused:
        return False
    encrypted = _encrypted_files(entries)
    for secret in _password_bytes(password) if encrypted else []:
        try:
            _prove_entries(data, encrypted, secret)
            for entry in encrypted:
                if not entry.is_aes:  # the CRC is ZipCrypto's only proof: inflate, keep nothing
                    _read_entry(data, entry, secret, keep=None)
            return True
        except _WrongPassword:
            continue
        except ExtractRefused:  # damage found while inflating: not proven either
            return False
    return False


def extract_members(data: bytes, password: str, limits: ExtractLimits) -> ExtractResult:
    """Decrypt, inflate and verify every member; nested plain ZIPs are opened up to max_depth.

    Proves the password as it goes, so calling it per candidate needs no prove_password first.
    Raises ExtractRefused: "wrong password" means only that this password is not proven (try
    the next candidate); any other reason concerns the archive whatever the password.
    """
    entries = _read_directory(data, limits, _Budget(limits.max_members, limits.max_total_bytes))
    encrypted = _encrypted_files(entries)
    for secret in _password_bytes(password) if encrypted else [b""]:
        try:
            _prove_entries(data, encrypted, secret)  # cheap checks first: nothing inflated yet
            budget = _Budget(limits.max_members - len(entries), limits.max_total_bytes)
            files: list[ExtractedFile] = []
            notes: list[str] = []
            _extract_entries(data, entries, secret, limits, budget, _Level(0, ""), files, notes)
            return ExtractResult(tuple(_unique_names(files)), tuple(notes))
        except _WrongPassword:
            continue
    raise ExtractRefused("wrong password")


def _encrypted_files(entries: list[_Entry]) -> list[_Entry]:
    return [entry for entry in entries if entry.encrypted and not entry.is_dir]


# --- structure: everything checked before inflating ---------------------------------------------


def _read_directory(data: bytes, limits: ExtractLimits, budget: _Budget) -> list[_Entry]:
    """The entries of data, after every check that needs no inflating, in the order of the
    central directory."""
    report = inspect_zip(data, max_members=budget.members)
    if report.verdict is ZipVerdict.CORRUPT_ZIP and report.reason.startswith("too many entries"):
        raise ExtractRefused("too many members")
    if report.verdict in (ZipVerdict.NOT_ZIP, ZipVerdict.CORRUPT_ZIP) or report.reason:
        raise ExtractRefused("corrupt")
    infos, directory_start = _central_records(data)
    if len(infos) != len(report.members):
        raise ExtractRefused("corrupt")  # the two readers disagree: do not guess which is right
    for member, info in zip(report.members, infos, strict=True):
        sizes = (member.compressed_size, member.uncompressed_size)
        if sizes != (info.compress_size, info.file_size) or member.encrypted != bool(
            info.flag_bits & _FLAG_ENCRYPTED
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


def _central_records(data: bytes) -> tuple[list[AESZipInfo], int]:
    try:
        with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
            return archive.infolist(), archive.start_dir
    except _PARSER_ERRORS:  # what pyzipper's reader raises on hostile bytes: all mean "corrupt"
        raise ExtractRefused("corrupt") from None


def _entry(data: bytes, name: str, info: AESZipInfo) -> _Entry:
    """The entry with where its data starts, read from its local header."""
    start = info.header_offset
    if start < 0 or start + _LOCAL.size > len(data):
        raise ExtractRefused("corrupt")
    fields = _LOCAL.unpack_from(data, start)
    if fields[0] != LOCAL_SIGNATURE:
        raise ExtractRefused("corrupt")
    name_end = start + _LOCAL.size + fields[9]
    return _Entry(name, info, start, name_end + fields[10], data[start + _LOCAL.size : name_end])


def _raw_name(info: AESZipInfo) -> bytes:
    """The name bytes as stored; pyzipper decoded them as UTF-8 (flag bit 11) or lossless CP437."""
    encoding = "utf-8" if info.flag_bits & _FLAG_UTF8_NAME else "cp437"
    return info.orig_filename.encode(encoding)


def _check_layout(entries: list[_Entry], directory_start: int) -> None:
    """Each entry's [local header, end of data) lies before the directory, none overlapping:
    the overlapping-entry bomb makes many entries inflate the same bytes."""
    previous_end = 0
    for entry in sorted(entries, key=lambda e: e.header_start):
        if entry.data_end > directory_start:
            raise ExtractRefused("corrupt")
        if entry.header_start < previous_end:
            raise ExtractRefused("overlapping entries (zip bomb)")
        previous_end = entry.data_end


def _check_names(entries: list[_Entry]) -> None:
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ExtractRefused("duplicate names")


def _check_sizes(entries: list[_Entry], limits: ExtractLimits, budget: _Budget) -> None:
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


def _check_methods(entries: list[_Entry]) -> None:
    for entry in entries:
        if entry.is_dir:
            continue
        if entry.info.flag_bits & _FLAG_STRONG_ENCRYPTION:
            raise ExtractRefused("unsupported encryption")
        if entry.info.compress_type not in (_STORED, _DEFLATED, _BZIP2, _LZMA):
            raise ExtractRefused(f"unsupported compression method {entry.info.compress_type}")
        if entry.encrypted and entry.info.compress_size < _encryption_overhead(entry):
            raise ExtractRefused("corrupt")


def _encryption_overhead(entry: _Entry) -> int:
    """Bytes of an encrypted member that are not its data: salt, verifier, MAC; or the header."""
    if not entry.is_aes:
        return _ZIPCRYPTO_HEADER_LENGTH
    if entry.info.wz_aes_strength not in _AES_SALT_LENGTHS:
        raise ExtractRefused("corrupt")
    return _AES_SALT_LENGTHS[entry.info.wz_aes_strength] + 2 + _AES_MAC_LENGTH


# --- extraction --------------------------------------------------------------------------------


class _WrongPassword(Exception):
    """This password does not open this member (or, for ZipCrypto, cannot be shown to)."""


@dataclass(frozen=True)
class _Level:
    depth: int  # 0 for the archive itself, 1 for a ZIP inside it, ...
    prefix: str  # display name of the ZIP this level came from, with "/", or ""


def _extract_entries(
    data: bytes,
    entries: list[_Entry],
    secret: bytes,
    limits: ExtractLimits,
    budget: _Budget,
    level: _Level,
    files: list[ExtractedFile],
    notes: list[str],
) -> None:
    """Append every file of entries to files; a plain *.zip member is opened in its place."""
    for index, entry in enumerate(entries):
        if entry.is_dir:
            continue
        pieces: list[bytes] = []
        _read_entry(data, entry, secret, keep=pieces.append)
        content = b"".join(pieces)
        del pieces
        budget.total_bytes -= len(content)
        name = level.prefix + (display_path(entry.name) or f"file-{index + 1}")
        verdict = inspect_zip(content).verdict if content[:2] == b"PK" else ZipVerdict.NOT_ZIP
        if verdict is ZipVerdict.ENCRYPTED_ZIP:
            notes.append(f"double ZIP: {name}")
        # only what is named .zip: .xlsx, .docx, .jar and friends are ZIPs too, but are files
        if verdict is ZipVerdict.PLAIN_ZIP and name.lower().endswith(".zip"):
            if level.depth + 1 > limits.max_depth:
                raise ExtractRefused("nested too deep")
            inner = _read_directory(content, limits, budget)
            if any(not inner_entry.is_dir for inner_entry in inner):
                budget.members -= len(inner)
                inner_level = _Level(level.depth + 1, name + "/")
                _extract_entries(content, inner, b"", limits, budget, inner_level, files, notes)
                continue
        files.append(_extracted(name, content))


def _extracted(name: str, content: bytes) -> ExtractedFile:
    return ExtractedFile(name, content, len(content), hashlib.sha256(content).hexdigest())


def _read_entry(
    data: bytes, entry: _Entry, secret: bytes, keep: Callable[[bytes], None] | None
) -> None:
    """Decrypt, inflate and verify one member, handing each inflated piece to keep.

    Stops as soon as the output passes the declared size (the limits were checked against it).
    """
    declared = entry.info.file_size
    produced = 0
    crc = 0
    try:
        for piece in _inflated(_plain_compressed(data, entry, secret), entry.info.compress_type):
            produced += len(piece)
            if produced > declared:
                _overflowed(entry)
            crc = zlib.crc32(piece, crc)
            if keep is not None:
                keep(piece)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        _unreadable(entry)
    crc_applies = not entry.is_aes or entry.info.wz_aes_version == 1 or entry.info.CRC != 0
    if produced != declared or (crc_applies and crc != entry.info.CRC):
        _unreadable(entry)


def _overflowed(entry: _Entry) -> None:
    """More output than declared: a lying header, or under ZipCrypto possibly a wrong key."""
    if entry.encrypted and not entry.is_aes:
        raise _WrongPassword()
    raise ExtractRefused("declared size exceeded (zip bomb)")


def _unreadable(entry: _Entry) -> None:
    """Bad data: under ZipCrypto a wrong key looks exactly like this; otherwise it is damage."""
    if entry.encrypted and not entry.is_aes:
        raise _WrongPassword()
    raise ExtractRefused("corrupt")


def _plain_compressed(data: bytes, entry: _Entry, secret: bytes) -> Iterator[bytes]:
    """The member's compressed bytes, decrypted when encrypted, in chunks."""
    body = memoryview(data)[entry.data_start : entry.data_end]
    if not entry.encrypted:
        yield from _chunks(body)
    elif entry.is_aes:
        # the password was proven (verifier and MAC) before: pyzipper only decrypts here
        header_length = _AES_SALT_LENGTHS[entry.info.wz_aes_strength] + 2
        decrypter = AESZipDecrypter(entry.info, secret, bytes(body[:header_length]))
        for chunk in _chunks(body[header_length:-_AES_MAC_LENGTH]):
            yield decrypter.decrypt(chunk)
    else:
        keys = _zipcrypto_keys(secret)
        _, keys = _zipcrypto_decrypt(body[:_ZIPCRYPTO_HEADER_LENGTH], keys)
        for chunk in _chunks(body[_ZIPCRYPTO_HEADER_LENGTH:]):
            plain, keys = _zipcrypto_decrypt(chunk, keys)
            yield plain


def _chunks(view: memoryview) -> Iterator[bytes]:
    for start in range(0, len(view), _CHUNK):
        yield bytes(view[start : start + _CHUNK])


def _inflated(compressed: Iterator[bytes], method: int) -> Iterator[bytes]:
    """Inflate in pieces of at most _CHUNK bytes, so a bomb never gets a large buffer."""
    if method == _STORED:
        yield from compressed
    elif method == _DEFLATED:
        yield from _inflated_deflate(compressed)
    else:
        yield from _inflated_stream(compressed, method)


def _inflated_deflate(compressed: Iterator[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(-15)
    for chunk in compressed:
        pending = chunk
        while pending and not inflater.eof:
            yield inflater.decompress(pending, _CHUNK)
            pending = inflater.unconsumed_tail
    yield inflater.flush()  # at most what one step decoded from its last input


def _inflated_stream(compressed: Iterator[bytes], method: int) -> Iterator[bytes]:
    """bzip2 and LZMA: their decompressors buffer input themselves; ask for output in steps."""
    header = b""
    inflater: bz2.BZ2Decompressor | lzma.LZMADecompressor | None = None
    if method == _BZIP2:
        inflater = bz2.BZ2Decompressor()
    for chunk in compressed:
        if inflater is None:  # LZMA in ZIP: version (2), properties size (2), properties
            header += chunk
            if len(header) < 4 or len(header) < 4 + struct.unpack_from("<H", header, 2)[0]:
                continue
            inflater, chunk = _lzma_inflater(header)
        pending = chunk  # all input after the end of stream is ignored, but still read
        while not inflater.eof:  # (for AES its MAC covers it)
            yield inflater.decompress(pending, _CHUNK)
            pending = b""
            if inflater.needs_input:
                break


def _lzma_inflater(header: bytes) -> tuple[lzma.LZMADecompressor, bytes]:
    """A raw LZMA1 decoder for the 5 properties bytes after the ZIP LZMA header, and the rest."""
    properties_size = struct.unpack_from("<H", header, 2)[0]
    if properties_size != 5:
        raise ValueError("unexpected LZMA properties size")
    properties = header[4:9]
    lc_lp_pb, dictionary_size = properties[0], int.from_bytes(properties[1:5], "little")
    if lc_lp_pb >= 9 * 5 * 5:
        raise ValueError("bad LZMA properties")
    lc, lp, pb = lc_lp_pb % 9, lc_lp_pb // 9 % 5, lc_lp_pb // 45
    # liblzma allocates the whole dictionary up front: a claimed 4 GiB must not cost 4 GiB.
    # The declared-size cap stops output long before a smaller dictionary could matter.
    dictionary_size = max(4096, min(dictionary_size, 64 * _MIB))
    lzma_filter = {"id": lzma.FILTER_LZMA1, "dict_size": dictionary_size, "lc": lc, "lp": lp,
                   "pb": pb}
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma_filter]), header[9:]


# --- passwords ---------------------------------------------------------------------------------


def _password_bytes(password: str) -> list[bytes]:
    """UTF-8 (7-Zip, WinZip AES), then CP932 (Japanese Windows archivers), when they differ."""
    if not password:
        return []
    encodings = [password.encode("utf-8")]
    try:
        cp932 = password.encode("cp932")
    except UnicodeEncodeError:
        return encodings
    return encodings if cp932 in encodings else encodings + [cp932]


def _prove_entries(data: bytes, entries: list[_Entry], secret: bytes) -> None:
    """Raise _WrongPassword unless every entry passes its cheap check (and AES its MAC)."""
    for entry in entries:  # all check bytes / verifiers first: a wrong password costs nothing
        if not _header_check_passes(data, entry, secret):
            raise _WrongPassword()
    for entry in entries:
        if entry.is_aes and not _aes_mac_matches(data, entry, secret):
            raise _WrongPassword()


def _header_check_passes(data: bytes, entry: _Entry, secret: bytes) -> bool:
    body = memoryview(data)[entry.data_start : entry.data_end]
    if entry.is_aes:
        salt_length = _AES_SALT_LENGTHS[entry.info.wz_aes_strength]
        keys = _aes_keys(secret, bytes(body[:salt_length]))
        return hmac.compare_digest(keys[2], body[salt_length : salt_length + 2])
    header, _ = _zipcrypto_decrypt(body[:_ZIPCRYPTO_HEADER_LENGTH], _zipcrypto_keys(secret))
    return header[-1] in _zipcrypto_check_bytes(entry.info)


def _aes_keys(secret: bytes, salt: bytes) -> tuple[bytes, bytes, bytes]:
    """(encryption key, MAC key, 2-byte password verifier), as WinZip AES derives them."""
    key_length = 2 * len(salt)
    material = hashlib.pbkdf2_hmac("sha1", secret, salt, 1000, 2 * key_length + 2)
    return material[:key_length], material[key_length : 2 * key_length], material[-2:]


def _aes_mac_matches(data: bytes, entry: _Entry, secret: bytes) -> bool:
    """HMAC-SHA1 over the whole encrypted data, first 10 bytes: proves the key before decrypting."""
    body = memoryview(data)[entry.data_start : entry.data_end]
    salt_length = _AES_SALT_LENGTHS[entry.info.wz_aes_strength]
    _, mac_key, _ = _aes_keys(secret, bytes(body[:salt_length]))
    mac = hmac.new(mac_key, digestmod="sha1")
    for chunk in _chunks(body[salt_length + 2 : -_AES_MAC_LENGTH]):
        mac.update(chunk)
    return hmac.compare_digest(mac.digest()[:_AES_MAC_LENGTH], body[-_AES_MAC_LENGTH:])


def _zipcrypto_check_bytes(info: AESZipInfo) -> tuple[int, ...]:
    """The high byte of the CRC; with a data descriptor, archivers use the file time's instead
    (Info-ZIP), though some keep the CRC's: accept either, the CRC check decides anyway."""
    by_crc = (info.CRC >> 24) & 0xFF
    if info.flag_bits & _FLAG_DATA_DESCRIPTOR:
        return ((info._raw_time >> 8) & 0xFF, by_crc)
    return (by_crc,)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0xEDB88320 if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_CRC_TABLE = _crc_table()
# the keystream byte depends only on the low 16 bits of key 2: look it up instead of multiplying
_ZIPCRYPTO_STREAM = bytes(((k | 2) * ((k | 2) ^ 1) >> 8) & 0xFF for k in range(65536))
_ZipCryptoKeys = tuple[int, int, int]


def _zipcrypto_keys(secret: bytes) -> _ZipCryptoKeys:
    keys = (0x12345678, 0x23456789, 0x34567890)
    for byte in secret:
        keys = _zipcrypto_update(keys, byte)
    return keys


def _zipcrypto_update(keys: _ZipCryptoKeys, byte: int) -> _ZipCryptoKeys:
    key0, key1, key2 = keys
    key0 = (key0 >> 8) ^ _CRC_TABLE[(key0 ^ byte) & 0xFF]
    key1 = ((key1 + (key0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
    key2 = (key2 >> 8) ^ _CRC_TABLE[(key2 ^ (key1 >> 24)) & 0xFF]
    return key0, key1, key2


def _zipcrypto_decrypt(
    cipher: memoryview | bytes, keys: _ZipCryptoKeys
) -> tuple[bytes, _ZipCryptoKeys]:
    """Traditional PKWARE decryption; the key update is inlined because it runs once per byte."""
    key0, key1, key2 = keys
    table, stream = _CRC_TABLE, _ZIPCRYPTO_STREAM
    plain = bytearray(cipher)
    for index in range(len(plain)):
        byte = plain[index] ^ stream[key2 & 0xFFFF]
        plain[index] = byte
        key0 = (key0 >> 8) ^ table[(key0 ^ byte) & 0xFF]
        key1 = ((key1 + (key0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        key2 = (key2 >> 8) ^ table[(key2 ^ (key1 >> 24)) & 0xFF]
    return bytes(plain), (key0, key1, key2)


# --- display names -----------------------------------------------------------------------------


def display_path(name: str) -> str:
    """A member name as a display string "folder/name": no empty, "." or ".." components, no
    leading separator or drive letter, each component display_safe. Never a path to join."""
    components = re.split(r"[/\\]+", name)
    components[0] = _DRIVE_LETTER.sub("", components[0])
    kept = [display_safe(part) for part in components if part not in ("", ".", "..")]
    kept = [part for part in kept if part]
    while len("/".join(kept)) > _MAX_DISPLAY_NAME and len(kept) > 1:
        kept.pop(0)  # deep folders go first: the file's own name matters most
    return "/".join(kept)


def _unique_names(files: list[ExtractedFile]) -> list[ExtractedFile]:
    """Names that collide once neutralised ("a/../x" and "x") get " (2)", " (3)", ..."""
    seen: set[str] = set()
    unique: list[ExtractedFile] = []
    for extracted in files:
        name = extracted.display_name
        stem, dot, extension = name.rpartition(".")
        if not dot or "/" in extension:
            stem, dot, extension = name, "", ""
        number = 2
        while name in seen:
            name = f"{stem} ({number}){dot}{extension}"
            number += 1
        seen.add(name)
        unique.append(ExtractedFile(name, extracted.data, extracted.size, extracted.sha256))
    return unique
