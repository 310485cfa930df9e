"""Look into a file's bytes for an encrypted archive wherever it hides, and say whether the file
can go out as it is.

An archive counts by its content, not by its label or its offset: encrypted ZIP entries are
found by their records anywhere in the bytes (after a self-extractor stub, before trailing
junk, inside a stored member or a tar), 7z and RAR archives by their signatures. Every
container that can hide a file is opened the way 7-Zip or a mail client would: plain ZIP
members, gzip/bzip2/xz streams, 7z folders, Outlook items and other compound files, PDF
streams, CMS (S/MIME) content, attached mail, and files carried as text (base64, uuencode,
yEnc, BinHex, quoted-printable). What cannot be opened comes back UNINSPECTABLE, never CLEAN.

One ContentInspector serves one message: every byte produced by unpacking or decoding is
charged to its budget, nesting is bounded and a deadline bounds the time. Past a budget it
raises InspectionLimit (the message is refused, naming the limit); past the deadline,
InspectionTimedOut (the sender retries later).
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gateway.containers.base import (
    InspectionLimit,
    InspectionTimedOut,
    Unreadable,
    Unsupported,
)
from gateway.containers.embedded import embedded_files, looks_like_text
from gateway.containers.office import compound_streams, inspect_cfb
from gateway.containers.pdf import PDF_HEADER_WINDOW, inspect_pdf
from gateway.containers.rar import inspect_rar
from gateway.containers.sevenzip import inspect_7z, unpack_7z
from gateway.containers.shells import may_report, read_cms, read_pgp
from gateway.filenames import decode_base64_letters
from gateway.model import ContentReport, Finding

MiB = 1024 * 1024


CLEAN = ContentReport(Finding.CLEAN)


@dataclass(frozen=True)
class InspectionLimits:
    max_expanded: int = 256 * MiB  # bytes produced by unpacking and decoding, per message
    max_nesting: int = 10  # files inside files
    timeout: float = 60.0  # seconds for the whole message
    max_records: int = 100_000  # signatures looked at per file


# What an attached message holds, as a nested inspection sees it: bytes to inspect, or a
# finding about a part that cannot be opened (a genuine S/MIME or PGP shell, a fragment).
MessageOpener = Callable[[bytes, int], Iterable[bytes | ContentReport]]

_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_CENTRAL = b"PK\x01\x02"
_ZIP_END = b"PK\x05\x06"
_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_ZIP_ENCRYPTED_FLAGS = 0x0001 | 0x0040  # traditional or AES (bit 0), strong encryption (bit 6)
_ZIP_AES = 99
_ZIP_STORED, _ZIP_DEFLATED, _ZIP_BZIP2, _ZIP_LZMA = 0, 8, 12, 14
# methods APPNOTE defines: a record claiming another is noise, not a ZIP
_ZIP_METHODS = frozenset(
    {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 14, 16, 18, 19, 20, 93, 94, 95, 96, 97, 98, 99}
)
_SEVEN_ZIP = b"7z\xbc\xaf\x27\x1c"
_RAR = b"Rar!\x1a\x07"
_CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_PDF = b"%PDF-"
_GZIP = re.compile(rb"\x1f\x8b\x08[\x00-\x1f]")
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")
_XZ = b"\xfd7zXZ\x00"
_PDF_STREAM = re.compile(rb"stream\r?\n")
# archives we recognise and cannot unpack here: their contents stay unseen
_UNOPENABLE = (
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed data"),
    (re.compile(rb"\x04\x22\x4d\x18"), "LZ4-compressed data"),
    (re.compile(rb"LZIP[\x00\x01]"), "lzip-compressed data"),
    (re.compile(rb"\x1f[\x9d\xa0]"), "compress (.Z) data"),
    (re.compile(rb"MSCF\x00\x00\x00\x00"), "Microsoft cabinet archive"),
    (re.compile(rb"\x60\xea.[\x00-\x0a]", re.S), "ARJ archive"),  # then a header of <= 2600
    (re.compile(rb"..-l(?:h[1-7d]|zs|z5)-", re.S), "LZH archive"),
)
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_KNOWN_HEADERS = re.compile(
    rb"^(?:content-type|mime-version|from|to|subject|date|message-id|received|"
    rb"content-transfer-encoding|return-path)[ \t]*:", re.I | re.M
)
_MEMO_MIN = 1024  # smaller files are looked at again rather than hashed
_NOT_BASE64_LETTERS = bytes(sorted(set(range(256)) - set(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")))
_MIN_BASE64_LETTERS = 32
# what base64 text is made of: letters, padding, line ends, quote prefixes
_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n \t>"


class ContentInspector:
    """Inspects the files of one message against one budget."""

    def __init__(self, limits: InspectionLimits, open_message: MessageOpener,
                 clock: Callable[[], float] = time.monotonic):
        self._limits = limits
        self._open_message = open_message
        self._clock = clock
        self._deadline = clock() + limits.timeout
        self._expanded = 0
        self._seen: dict[bytes, ContentReport] = {}

    def inspect(self, data: bytes, depth: int = 0) -> ContentReport:
        """The heaviest finding in data and everything it holds."""
        self._check_time()
        if depth > self._limits.max_nesting:
            raise InspectionLimit(f"files nested more than {self._limits.max_nesting} deep")
        # A file seen before in this message (the parts a converted copy keeps are looked at
        # again before it leaves) is not opened twice. Only whole leaves are remembered, by
        # their SHA-256 (no sender can make two files share one), not by their bytes: the
        # message lets go of its decoded files once they are stored.
        key = hashlib.sha256(data).digest() if depth == 0 and len(data) >= _MEMO_MIN else None
        if key is not None and key in self._seen:
            return self._seen[key]
        report = _heaviest(self._findings(data, depth))
        if key is not None:
            self._seen[key] = report
        return report

    def allow_time(self) -> None:
        """Start the deadline again: each converted copy is looked at against its own, not
        against the time the copies before it (and their deliveries) took."""
        self._deadline = self._clock() + self._limits.timeout

    def charge(self, size: int) -> None:
        """Count bytes produced by unpacking or decoding against the message's budget."""
        self._expanded += size
        if self._expanded > self._limits.max_expanded:
            raise InspectionLimit(
                f"its contents expand beyond {self._limits.max_expanded // MiB} MiB")

    @property
    def remaining(self) -> int:
        return max(0, self._limits.max_expanded - self._expanded)

    # --- what one file holds ----------------------------------------------------------

    def _findings(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        """Findings in data, cheapest first; the caller stops at the first ENCRYPTED."""
        yield from self._zip_records(data, depth)
        yield from self._seven_zips(data, depth)
        yield from self._rars(data)
        yield from self._unopenable(data)
        if data.startswith(_CFB):
            yield from self._compound_file(data, depth)
        if data.find(_PDF, 0, PDF_HEADER_WINDOW) >= 0:
            yield from self._pdf(data, depth)
        yield from self._compressed_streams(data, depth)
        yield from self._shells(data, depth)
        if _looks_like_message(data):
            for piece in self._open_message(data, self.remaining):
                yield piece if isinstance(piece, ContentReport) else self.inspect(piece, depth + 1)
        elif looks_like_text(data):
            for found in embedded_files(data, max_output=self.remaining):
                if found.kind == "binhex":  # the one text encoding that expands (run lengths)
                    self.charge(len(found.data))
                if _worth_a_look(found.data):
                    yield _within(self.inspect(found.data, depth + 1), f"{found.kind} text")
            yield from self._base64_among_text(data, depth)

    def _base64_among_text(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        """The text's base64 characters taken together, the rest ignored, as `base64 -di`
        and lenient decoders read it (from each of the four alignments: the text before a
        block shifts it). Decoding never expands, so it is not charged to the budget."""
        if not data.translate(None, _BASE64_TEXT):
            return  # base64 lines and nothing else: the run decoding above read them whole
        letters = data.translate(None, _NOT_BASE64_LETTERS)
        if len(letters) < _MIN_BASE64_LETTERS:
            return
        view = memoryview(letters)
        for skip in range(4):
            self._check_time()
            decoded = decode_base64_letters(view[skip:])
            if _worth_a_look(decoded):
                yield _within(self.inspect(decoded, depth + 1), "base64 among text")

    def _zip_records(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        """Encrypted ZIP entries by their local or central records, wherever they sit; the
        data of every plain compressed entry is unpacked and looked into."""
        # An encryption flag under a method APPNOTE does not define still counts where the
        # bytes hold a whole ZIP (local and central records): that is a tampered archive,
        # which 7-Zip reports as encrypted, not two chance signatures.
        whole = _WholeZip(data)
        plain: list[tuple[int, int, int]] = []
        for position in self._occurrences(data, _ZIP_LOCAL):
            if position + _LOCAL.size > len(data):
                continue
            fields = _LOCAL.unpack_from(data, position)
            flags, method = fields[2], fields[3]
            if _zip_encrypted(flags, method, whole):
                yield ContentReport(Finding.ENCRYPTED, "encrypted ZIP entry")
                return
            if method in _ZIP_METHODS:
                plain.append((position + _LOCAL.size + fields[9] + fields[10], method, fields[7]))
        for position in self._occurrences(data, _ZIP_CENTRAL):
            if position + _CENTRAL.size <= len(data):
                fields = _CENTRAL.unpack_from(data, position)
                if _zip_encrypted(fields[3], fields[4], whole):
                    yield ContentReport(Finding.ENCRYPTED, "encrypted ZIP entry")
                    return
        for start, method, size in plain:
            yield from self._zip_entry(data, start, method, size, depth)

    def _zip_entry(self, data: bytes, start: int, method: int, size: int,
                   depth: int) -> Iterator[ContentReport]:
        if start >= len(data):
            return
        if method == _ZIP_STORED:
            if 0 < size <= len(data) - start:
                self.charge(size)
                yield self.inspect(data[start:start + size], depth + 1)
            return
        unpack = _ZIP_UNPACKERS.get(method)
        if unpack is None:
            yield ContentReport(Finding.UNINSPECTABLE, f"ZIP entry compressed with method {method}")
            return
        try:
            content = self._unpacked(unpack(), memoryview(data)[start:])
        except Unsupported as problem:
            yield ContentReport(Finding.UNINSPECTABLE, f"ZIP entry: {problem}")
            return
        if content:
            yield _within(self.inspect(content, depth + 1), "ZIP entry")

    def _seven_zips(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        for position in self._occurrences(data, _SEVEN_ZIP):
            archive = data[position:] if position else data
            try:
                report = inspect_7z(archive)
                if report.encrypted:
                    yield ContentReport(Finding.ENCRYPTED, "encrypted 7z archive")
                    return
                folders = unpack_7z(archive, max_output=self.remaining)
            except Unsupported as problem:
                yield ContentReport(Finding.UNINSPECTABLE, f"7z archive: {problem}")
                continue
            except Unreadable as problem:
                if position == 0:  # it claims to be a 7z and is broken: 7-Zip may differ
                    yield ContentReport(Finding.UNINSPECTABLE, f"unreadable 7z archive: {problem}")
                continue
            for folder in folders:
                self.charge(len(folder))
                yield _within(self.inspect(folder, depth + 1), "7z archive")

    def _rars(self, data: bytes) -> Iterator[ContentReport]:
        for position in self._occurrences(data, _RAR):
            try:
                report = inspect_rar(data[position:] if position else data)
            except Unreadable as problem:
                if position == 0:
                    yield ContentReport(Finding.UNINSPECTABLE, f"unreadable RAR archive: {problem}")
                continue
            if report.encrypted:
                yield ContentReport(Finding.ENCRYPTED, "encrypted RAR archive")
                return
            if not report.all_stored:  # stored files lie in these very bytes, looked at here
                yield ContentReport(Finding.UNINSPECTABLE, "RAR archive with compressed files")

    def _unopenable(self, data: bytes) -> Iterator[ContentReport]:
        for signature, name in _UNOPENABLE:
            if signature.match(data):
                yield ContentReport(Finding.UNINSPECTABLE, name)

    def _compound_file(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        """Office documents, Outlook items, embedded OLE objects: every stream."""
        try:
            if inspect_cfb(data).encrypted:
                yield ContentReport(Finding.ENCRYPTED, "password-protected Office document")
                return
            streams = list(compound_streams(data, max_output=self.remaining))
        except Unreadable as problem:
            yield ContentReport(Finding.UNINSPECTABLE, f"unreadable compound file: {problem}")
            return
        for _, stream in streams:
            self.charge(len(stream))
            yield _within(self.inspect(stream, depth + 1), "compound file")

    def _pdf(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        if inspect_pdf(data).encrypted:
            yield ContentReport(Finding.ENCRYPTED, "password-protected PDF")
            return
        # embedded files (and everything else) sit in Flate streams
        for match in self._matches(data, _PDF_STREAM):
            content = self._unpacked(zlib.decompressobj(), memoryview(data)[match.end():])
            if content:
                yield _within(self.inspect(content, depth + 1), "PDF stream")

    def _compressed_streams(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        for pattern, make, name in (
            (_GZIP, lambda: zlib.decompressobj(31), "gzip stream"),
            (_BZIP2, bz2.BZ2Decompressor, "bzip2 stream"),
        ):
            for match in self._matches(data, pattern):
                content = self._unpacked(make(), memoryview(data)[match.start():])
                if content:
                    yield _within(self.inspect(content, depth + 1), name)
        for position in self._occurrences(data, _XZ):
            xz = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=128 * MiB)
            content = self._unpacked(xz, memoryview(data)[position:])
            if content:
                yield _within(self.inspect(content, depth + 1), "xz stream")

    def _shells(self, data: bytes, depth: int) -> Iterator[ContentReport]:
        """An attached .p7m or .gpg file: encrypted to a key, to a password, or signed."""
        if not _may_be_shell(data):
            return
        pgp = read_pgp(data)
        if pgp is not None and pgp.kind == "encrypted":
            if pgp.password_only:
                yield ContentReport(Finding.ENCRYPTED, "OpenPGP message encrypted with a password")
            else:
                yield ContentReport(Finding.OPAQUE, "OpenPGP message encrypted to a key")
            return
        cms = read_cms(data, max_output=self.remaining)
        if cms is None:
            return
        if cms.kind in ("enveloped-data", "authenticated-enveloped-data"):
            if cms.password_only:
                yield ContentReport(Finding.ENCRYPTED, "S/MIME message encrypted with a password")
            else:
                yield ContentReport(Finding.OPAQUE, "S/MIME message encrypted to a key")
        elif cms.content:
            self.charge(len(cms.content))
            yield _within(self.inspect(cms.content, depth + 1), f"CMS {cms.kind}")

    # --- helpers ----------------------------------------------------------------------

    def _unpacked(self, decompressor, source: memoryview) -> bytes:
        """What the decompressor makes of source, up to its end of stream or its first error,
        charged to the budget as it comes; past the budget raises InspectionLimit."""
        out = bytearray()
        pending: bytes | memoryview = source
        try:
            while True:
                self._check_time()
                chunk = decompressor.decompress(pending, min(self.remaining + 1, 16 * MiB))
                self.charge(len(chunk))
                out += chunk
                if decompressor.eof:
                    break
                if hasattr(decompressor, "unconsumed_tail"):  # zlib keeps what it did not read
                    pending = decompressor.unconsumed_tail
                    if not pending:
                        break
                elif decompressor.needs_input:  # bz2 and lzma hold it inside
                    break
                else:
                    pending = b""
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
            pass  # garbage, a false signature or an unsupported variant: keep what came out
        return bytes(out)

    def _occurrences(self, data: bytes, signature: bytes) -> Iterator[int]:
        position = data.find(signature)
        count = 0
        while position >= 0:
            count += 1
            self._count(count)
            yield position
            position = data.find(signature, position + 1)

    def _matches(self, data: bytes, pattern: re.Pattern[bytes]) -> Iterator[re.Match[bytes]]:
        for count, match in enumerate(pattern.finditer(data), start=1):
            self._count(count)
            yield match

    def _count(self, count: int) -> None:
        if count > self._limits.max_records:
            raise InspectionLimit(
                f"a file holds more than {self._limits.max_records} archive signatures")
        if count % 1024 == 0:
            self._check_time()

    def _check_time(self) -> None:
        if self._clock() > self._deadline:
            raise InspectionTimedOut(f"inspection took longer than {self._limits.timeout:g} s")


def _heaviest(findings: Iterable[ContentReport]) -> ContentReport:
    worst = CLEAN
    for report in findings:
        if report.finding > worst.finding:
            worst = report
        if worst.finding is Finding.ENCRYPTED:
            break  # nothing weighs more: stop looking
    return worst


def _within(report: ContentReport, container: str) -> ContentReport:
    if report.clean or not container:
        return report
    return ContentReport(report.finding, f"{report.reason} in {container}")


class _WholeZip:
    """Whether the bytes hold local and central ZIP records both; asked only when needed."""

    def __init__(self, data: bytes):
        self._data = data
        self._answer: bool | None = None

    def __bool__(self) -> bool:
        if self._answer is None:
            data = self._data
            self._answer = _ZIP_LOCAL in data and (_ZIP_CENTRAL in data or _ZIP_END in data)
        return self._answer


def _zip_encrypted(flags: int, method: int, whole_zip: _WholeZip) -> bool:
    if not (flags & _ZIP_ENCRYPTED_FLAGS or method == _ZIP_AES):
        return False
    # alone, an unknown method means bytes that happen to read "PK", not a ZIP record
    return method in _ZIP_METHODS or bool(whole_zip)


class _ZipLzma:
    """A ZIP entry's LZMA data: 2 bytes of version, 2 of property size, 5 property bytes
    (APPNOTE 5.8.8), then raw LZMA1, which the standard library reads with a filter chain."""

    _MAX_DICTIONARY = 64 * MiB  # 7-Zip's largest preset; a bigger claim is memory, not data

    def __init__(self) -> None:
        self._inner: lzma.LZMADecompressor | None = None
        self.eof = False
        self.needs_input = True

    def decompress(self, data, max_length: int) -> bytes:
        if self._inner is None:
            head = bytes(data[:9])
            if len(head) < 9:
                raise EOFError("LZMA header truncated")
            self._inner = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[_lzma1_filter(head[4:9])])
            data = data[9:]
        out = self._inner.decompress(data, max_length)
        self.eof, self.needs_input = self._inner.eof, self._inner.needs_input
        return out


def _lzma1_filter(properties: bytes) -> dict[str, int]:
    bits, dictionary = properties[0], int.from_bytes(properties[1:5], "little")
    if bits >= 9 * 5 * 5 or dictionary > _ZipLzma._MAX_DICTIONARY:
        raise Unsupported("LZMA properties out of range")
    return {"id": lzma.FILTER_LZMA1, "lc": bits % 9, "lp": bits // 9 % 5, "pb": bits // 45,
            "dict_size": max(dictionary, 4096)}


_ZIP_UNPACKERS: dict[int, Callable[[], object]] = {
    _ZIP_DEFLATED: lambda: zlib.decompressobj(-15),
    _ZIP_BZIP2: bz2.BZ2Decompressor,
    _ZIP_LZMA: _ZipLzma,
}


_SIGNATURES_ANYWHERE = (_ZIP_LOCAL, _ZIP_CENTRAL, _ZIP_END, _SEVEN_ZIP, _RAR, _XZ)
_SIGNATURES_AT_START = (_CFB, _PDF, b"\x1f\x8b", b"BZh", b"\x78\x9f\x3e\x22")
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r\x0c"


def _worth_a_look(decoded: bytes) -> bool:
    """Whether what a decoding of text produced can hold a file: an archive signature, a
    message, or text again (a file encoded twice). Decoding prose gives noise, and noise
    is not looked into: that would only go on decoding noise."""
    if len(decoded) < 22:
        return False
    if any(map(decoded.__contains__, _SIGNATURES_ANYWHERE)):
        return True
    if decoded.startswith(_SIGNATURES_AT_START):
        return True
    # one decoded alignment in about 30 starts like a packet or a SEQUENCE: only a whole one
    # is worth the look ("Thank you" decodes to an OpenPGP packet tag)
    if _may_be_shell(decoded) and may_report(decoded):
        return True
    head = decoded[:64 * 1024]
    return len(head.translate(None, _PRINTABLE)) * 20 <= len(head)


def _looks_like_message(data: bytes) -> bool:
    """Header fields first, then an empty line, with at least one header a message has."""
    head = data[:64 * 1024]
    if head.startswith(b"From "):
        head = head[head.find(b"\n") + 1:]
    end = _empty_line_start(head)
    if end <= 0:
        return False
    lines = re.split(rb"\r?\n", head[:end])
    if not _HEADER_LINE.match(lines[0]):
        return False
    if not all(_HEADER_LINE.match(line) or line[:1] in (b" ", b"\t") for line in lines):
        return False
    return _KNOWN_HEADERS.search(head, 0, end) is not None


def _empty_line_start(head: bytes) -> int:
    """Where re.search(rb"\\r?\\n\\r?\\n", head) would start, or -1: found by find (a text
    with no empty line is read in C at once, not tried at every byte by the regex)."""
    found = [at for at in (head.find(b"\n\n"), head.find(b"\n\r\n")) if at >= 0]
    if not found:
        return -1
    at = min(found)
    return at - 1 if at and head[at - 1] == 0x0D else at


def _may_be_shell(data: bytes) -> bool:
    """DER (a SEQUENCE), PEM or armor, or an OpenPGP packet that starts an encrypted message
    (public-key or symmetric session key, old or new packet format)."""
    if data[:1] == b"\x30" or data.lstrip()[:10] == b"-----BEGIN":
        return True
    return bool(data) and data[0] in (0x84, 0x85, 0x86, 0x8C, 0x8D, 0x8E, 0xC1, 0xC3)
