"""Prove a ZIP password and decrypt a ZIP's members, within limits that stop zip bombs.

The public face of archive opening. gateway.unlock.zipentries checks everything that needs no
inflating (structure, layout, sizes, ratios, names); gateway.unlock.zipdecrypt proves passwords
and decrypts. Here members are inflated under a running counter that stops at the declared size
even when the headers lie, nested plain ZIPs are opened up to a depth, and member names become
display names only: nothing here touches a path named by the archive.

Members stream, piece by piece, into a `MemberSink`: `extract_members_into` with the caller's
sink (the unlocker stores each member as an encrypted blob as it inflates, so memory follows a
chunk, not the archive), `extract_members` into memory (small archives, tests). A nested ZIP is
read back from the sink in place. The archive itself is `ZipData`: bytes, or a stored blob read
in place. Synchronous and CPU-bound: callers run it off the event loop.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gateway.containers.zipinspect import inspect_zip
from gateway.filenames import display_safe
from gateway.model import ZipVerdict
from gateway.unlock.zipdecrypt import (
    CHUNK,
    WrongPassword,
    decrypted_chunks,
    password_bytes,
    prove_entries,
)
from gateway.unlock.zipentries import (
    BZIP2,
    DEFLATED,
    STORED,
    Budget,
    ExtractLimits,
    ExtractRefused,
    ZipData,
    ZipEntry,
    encrypted_files,
    read_directory,
)

__all__ = [
    "ExtractLimits",
    "ExtractRefused",
    "ExtractResult",
    "ExtractedFile",
    "MemberSink",
    "ZipData",
    "display_path",
    "extract_members",
    "extract_members_into",
    "prove_password",
]

_MIB = 1024 * 1024
_MAX_DISPLAY_NAME = 255
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_DEFAULT_LIMITS = ExtractLimits()
_HEAD = 4  # bytes of a member kept to tell a ZIP ("PK")
Kept = TypeVar("Kept")


class MemberSink(Protocol[Kept]):
    """Where inflated members go, as they inflate."""

    def keep(self, pieces: Iterable[bytes]) -> Kept:
        """Consume pieces (an exception from them means: keep nothing); what keeps them now."""

    def reopen(self, kept: Kept) -> AbstractContextManager[ZipData]:
        """A kept member to read in place (a ZIP inside the ZIP is opened from it)."""

    def discard(self, kept: Kept) -> None:
        """Drop a kept member: refused, a wrong password after all, or a ZIP opened instead."""


class InMemory:
    """The sink that keeps each member as bytes."""

    def keep(self, pieces: Iterable[bytes]) -> bytes:
        return b"".join(pieces)

    def reopen(self, kept: bytes) -> AbstractContextManager[ZipData]:
        return nullcontext(kept)

    def discard(self, kept: bytes) -> None:
        pass


@dataclass(frozen=True)
class ExtractedFile(Generic[Kept]):
    display_name: str  # "folder/name.ext": a display string, never joined to a path
    kept: Kept  # where the sink put the content: its bytes (extract_members), or a blob
    size: int
    sha256: str

    @property
    def data(self) -> bytes:
        """The content of a member extracted into memory (extract_members)."""
        if not isinstance(self.kept, bytes):
            raise TypeError("this member was kept by its sink, not in memory")
        return self.kept


@dataclass(frozen=True)
class ExtractResult(Generic[Kept]):
    files: tuple[ExtractedFile[Kept], ...]
    notes: tuple[str, ...]  # e.g. "double ZIP: inner.zip" (an encrypted ZIP inside, kept whole)


def prove_password(data: ZipData, password: str, limits: ExtractLimits = _DEFAULT_LIMITS) -> bool:
    """True only if password opens every encrypted member: WinZip AES password verifier and
    HMAC-SHA1 authentication code, ZipCrypto check byte and CRC-32 of the inflated data.

    False for a wrong password, for a plain archive (nothing to prove) and for an archive that
    extract_members would refuse before inflating (bomb, corrupt): never an exception.
    """
    try:
        entries = read_directory(data, limits, Budget(limits.max_members, limits.max_total_bytes))
    except ExtractRefused:
        return False
    encrypted = encrypted_files(entries)
    for secret in password_bytes(password) if encrypted else []:
        try:
            prove_entries(data, encrypted, secret)
            for entry in encrypted:
                if not entry.is_aes:  # the CRC is ZipCrypto's only proof: inflate, keep nothing
                    for _ in _entry_pieces(data, entry, secret):
                        pass
            return True
        except WrongPassword:
            continue
        except ExtractRefused:  # damage found while inflating: not proven either
            return False
    return False


def extract_members(data: ZipData, password: str, limits: ExtractLimits) -> ExtractResult[bytes]:
    """extract_members_into memory: each file's content is its `data`."""
    return extract_members_into(data, password, limits, InMemory())


def extract_members_into(
    data: ZipData, password: str, limits: ExtractLimits, sink: MemberSink[Kept]
) -> ExtractResult[Kept]:
    """Decrypt, inflate and verify every member into sink; nested plain ZIPs are opened up to
    max_depth.

    Proves the password as it goes, so calling it per candidate needs no prove_password first.
    Raises ExtractRefused: "wrong password" means only that this password is not proven (try
    the next candidate); any other reason concerns the archive whatever the password. Whatever
    raises, the sink is left holding nothing of this call.
    """
    entries = read_directory(data, limits, Budget(limits.max_members, limits.max_total_bytes))
    encrypted = encrypted_files(entries)
    for secret in password_bytes(password) if encrypted else [b""]:
        files: list[ExtractedFile[Kept]] = []
        try:
            prove_entries(data, encrypted, secret)  # cheap checks first: nothing inflated yet
            budget = Budget(limits.max_members - len(entries), limits.max_total_bytes)
            notes: list[str] = []
            _extract_entries(
                data, entries, secret, _Walk(limits, budget, sink, files, notes), _Level(0, "")
            )
            return ExtractResult(tuple(_unique_names(files)), tuple(notes))
        except WrongPassword:
            _discard(sink, files)
            continue
        except BaseException:
            _discard(sink, files)
            raise
    raise ExtractRefused("wrong password")


def _discard(sink: MemberSink[Kept], files: list[ExtractedFile[Kept]]) -> None:
    for extracted in files:
        sink.discard(extracted.kept)


@dataclass(frozen=True)
class _Level:
    depth: int  # 0 for the archive itself, 1 for a ZIP inside it, ...
    prefix: str  # display name of the ZIP this level came from, with "/", or ""


@dataclass
class _Walk(Generic[Kept]):
    """What one extraction carries through every nesting level."""

    limits: ExtractLimits
    budget: Budget
    sink: MemberSink[Kept]
    files: list[ExtractedFile[Kept]]  # kept so far (the caller discards them on failure)
    notes: list[str]


def _extract_entries(
    data: ZipData, entries: list[ZipEntry], secret: bytes, walk: _Walk[Kept], level: _Level
) -> None:
    """Keep every file of entries in the sink; a plain *.zip member is opened in its place."""
    for index, entry in enumerate(entries):
        if entry.is_dir:
            continue
        content = _MemberContent(_entry_pieces(data, entry, secret))
        kept = walk.sink.keep(content)
        extracted = ExtractedFile(
            level.prefix + (display_path(entry.name) or f"file-{index + 1}"),
            kept, content.size, content.sha256.hexdigest(),
        )
        walk.budget.total_bytes -= extracted.size
        try:
            opened = content.head[:2] == b"PK" and _opened_in_place(extracted, walk, level)
        except BaseException:
            walk.sink.discard(kept)  # not yet among walk.files, which the caller discards
            raise
        if opened:
            walk.sink.discard(kept)  # its files stand in its place
            continue
        walk.files.append(extracted)


def _opened_in_place(extracted: ExtractedFile[Kept], walk: _Walk[Kept], level: _Level) -> bool:
    """Open a member that is a ZIP: a plain *.zip with files is extracted in its place (True);
    an encrypted one is noted as a double ZIP and kept whole."""
    name = extracted.display_name
    with walk.sink.reopen(extracted.kept) as content:
        verdict = inspect_zip(content).verdict
        if verdict is ZipVerdict.ENCRYPTED_ZIP:
            walk.notes.append(f"double ZIP: {name}")
        # only what is named .zip: .xlsx, .docx, .jar and friends are ZIPs too, but are files
        if verdict is not ZipVerdict.PLAIN_ZIP or not name.lower().endswith(".zip"):
            return False
        if level.depth + 1 > walk.limits.max_depth:
            raise ExtractRefused("nested too deep")
        inner = read_directory(content, walk.limits, walk.budget)
        if not any(not inner_entry.is_dir for inner_entry in inner):
            return False
        walk.budget.members -= len(inner)
        _extract_entries(content, inner, b"", walk, _Level(level.depth + 1, name + "/"))
        return True


class _MemberContent:
    """A member's inflated pieces on their way to the sink, measured as they pass: size,
    SHA-256 and the first bytes (is it a ZIP?)."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.head = b""

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            self.size += len(piece)
            self.sha256.update(piece)
            if len(self.head) < _HEAD:
                self.head += piece[: _HEAD - len(self.head)]
            yield piece


def _entry_pieces(data: ZipData, entry: ZipEntry, secret: bytes) -> Iterator[bytes]:
    """Decrypt, inflate and verify one member, yielding each inflated piece; raises after the
    last one when the data does not verify, so a sink must not keep what it got until the end.

    Stops as soon as the output passes the declared size (the limits were checked against it).
    """
    declared = entry.info.file_size
    produced = 0
    crc = 0
    try:
        for piece in _inflated(decrypted_chunks(data, entry, secret), entry.info.compress_type):
            produced += len(piece)
            if produced > declared:
                _overflowed(entry)
            crc = zlib.crc32(piece, crc)
            yield piece
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        _unreadable(entry)
    crc_applies = not entry.is_aes or entry.info.wz_aes_version == 1 or entry.info.CRC != 0
    if produced != declared or (crc_applies and crc != entry.info.CRC):
        _unreadable(entry)


def _overflowed(entry: ZipEntry) -> None:
    """More output than declared: a lying header, or under ZipCrypto possibly a wrong key."""
    if entry.encrypted and not entry.is_aes:
        raise WrongPassword()
    raise ExtractRefused("declared size exceeded (zip bomb)")


def _unreadable(entry: ZipEntry) -> None:
    """Bad data: under ZipCrypto a wrong key looks exactly like this; otherwise it is damage."""
    if entry.encrypted and not entry.is_aes:
        raise WrongPassword()
    raise ExtractRefused("corrupt")


def _inflated(compressed: Iterator[bytes], method: int) -> Iterator[bytes]:
    """Inflate in pieces of at most CHUNK bytes, so a bomb never gets a large buffer."""
    if method == STORED:
        yield from compressed
    elif method == DEFLATED:
        yield from _inflated_deflate(compressed)
    else:
        yield from _inflated_stream(compressed, method)


def _inflated_deflate(compressed: Iterator[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(-15)
    for chunk in compressed:
        pending = chunk
        while pending and not inflater.eof:
            yield inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail
    yield inflater.flush()  # at most what one step decoded from its last input


def _inflated_stream(compressed: Iterator[bytes], method: int) -> Iterator[bytes]:
    """bzip2 and LZMA: their decompressors buffer input themselves; ask for output in steps."""
    header = b""
    inflater: bz2.BZ2Decompressor | lzma.LZMADecompressor | None = None
    if method == BZIP2:
        inflater = bz2.BZ2Decompressor()
    for chunk in compressed:
        if inflater is None:  # LZMA in ZIP: version (2), properties size (2), properties
            header += chunk
            if len(header) < 4 or len(header) < 4 + struct.unpack_from("<H", header, 2)[0]:
                continue
            inflater, chunk = _lzma_inflater(header)
        pending = chunk  # all input after the end of stream is ignored, but still read
        while not inflater.eof:  # (for AES its MAC covers it)
            yield inflater.decompress(pending, CHUNK)
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


def _unique_names(files: list[ExtractedFile[Kept]]) -> list[ExtractedFile[Kept]]:
    """Names that collide once neutralised ("a/../x" and "x") get " (2)", " (3)", ..."""
    seen: set[str] = set()
    unique: list[ExtractedFile[Kept]] = []
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
        unique.append(ExtractedFile(name, extracted.kept, extracted.size, extracted.sha256))
    return unique
