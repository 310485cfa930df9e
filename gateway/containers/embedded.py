"""Find files carried as text inside a message body, decoded the way a recipient's tool would.

A sender can paste an encrypted ZIP into the text instead of attaching it: as base64 (perhaps
quoted in a reply), an HTML `data:` URI, a uuencode, yEnc or BinHex 4.0 block, or
quoted-printable text in a part not labelled as such. embedded_files decodes each of these
leniently, as mail clients and command-line decoders do, so the caller can inspect the bytes
like an attachment's. Every pass is linear in the length of the text (the regular expressions
use possessive quantifiers and never backtrack far), the decoded total and the number of blocks
are capped, and passing a cap raises InspectionLimit, the only exception raised here.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.containers.base import InspectionLimit
from gateway.filenames import (
    decode_base64_leniently,
    decode_base64_letters,
    decode_unlabelled,
    display_safe,
)

MAX_BLOCKS = 10_000

_TEXT_SAMPLE = 64 * 1024
# yEnc leaves about a tenth of its bytes as raw control bytes, so three in four is enough
_MIN_TEXT_SHARE = 0.75
_TEXT_BYTES = bytes([0x09, 0x0A, 0x0C, 0x0D, 0x1B]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))

_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_BASE64_ALPHABET)))
_HEX_DIGITS = b"0123456789ABCDEFabcdef"
_MIN_BASE64_RUN = 32
# Base64 characters, continued over line breaks that may bring trailing blanks and a quote
# prefix ("> ", ">>"); "=" padding ends it. The separators and the characters are disjoint.
_BASE64_LINE_BREAK = rb"[ \t]*+(?:\r\n|\r|\n)[> \t]*+"
_BASE64_BODY = rb"[A-Za-z0-9+/]++(?:" + _BASE64_LINE_BREAK + rb"[A-Za-z0-9+/]++)*+=*+"
# A run starts a line (after any quote prefix) and goes on to the next one, or it starts
# anywhere with _MIN_BASE64_RUN characters in a row. So "see below" before the base64 lines stays
# out of the run (it would shift every group), while base64 inside an HTML attribute or JSON is in.
_BASE64_RUN = re.compile(
    rb"(?:(?<![^\r\n])[> \t]*+(?=[A-Za-z0-9+/]++" + _BASE64_LINE_BREAK + rb"[A-Za-z0-9+/])"
    + rb"|(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]{" + str(_MIN_BASE64_RUN).encode() + rb"}))"
    + rb"(?P<run>" + _BASE64_BODY + rb")"
)
_BASE64_PAYLOAD = re.compile(_BASE64_BODY)
# every base64 character as "a", anything else as " ": rows of them are found with bytes.find
_BASE64_MASK = bytes(0x61 if value in _BASE64_ALPHABET else 0x20 for value in range(256))
_LINE_END_MASK = bytes(0x0A if value in (0x0A, 0x0D) else 0x78 for value in range(256))
_REGION_SEED = 20
_DATA_SCHEME = re.compile(rb"[dD][aA][tT][aA]:")  # cheap first look, no lower-cased copy
_REGION_SEED_BYTES = b"a" * _REGION_SEED
_BASE64_LINE_BREAK_RE = re.compile(_BASE64_LINE_BREAK)
_DATA_URI = re.compile(
    rb"(?<![A-Za-z0-9+.-])data:[^,;:\s\"'<>]{0,100}+(?P<params>(?:;[^,;:\s\"'<>]{0,100}+){0,10}+),"
    rb"(?P<payload>[^\s\"'<>()\\`]*+)",
    re.IGNORECASE,
)
_PERCENT_FLAGS = bytes(0xFF if value == ord("%") else 0 for value in range(256))
_HEX_DIGIT_FLAGS = bytes(0xFF if value in _HEX_DIGITS else 0 for value in range(256))

# Each header starts a line; the literal comes first so the regex engine can skip to it.
_UU_HEADER = re.compile(
    rb"begin(?<![^\r\n]begin)(?P<base64>-base64)?[ \t]++[0-7]{1,6}+"  # begin MODE
    rb"(?:[ \t]++(?P<name>[^\r\n]*+))?(?![^\r\n])"  # NAME, to the end of the line
)
_UU_END = re.compile(rb"end(?<![^\r\n]end)[ \t]*+(?![^\r\n])")
_UU_BASE64_END = re.compile(rb"====(?<![^\r\n]====)[ \t]*+(?![^\r\n])")
_YENC_HEADER = re.compile(rb"=ybegin(?<![^\r\n]=ybegin)(?P<params>[ \t][^\r\n]*+)")
_YENC_END = re.compile(rb"=yend(?<![^\r\n]=yend)[^\r\n]*+")
_YENC_PART_LINE = re.compile(rb"=ypart(?<![^\r\n]=ypart)[^\r\n]*+")
_YENC_NAME = re.compile(rb"[ \t]name=([^\r\n]*+)")
_YENC_MINUS_42 = bytes((value - 42) % 256 for value in range(256))
_YENC_MINUS_64 = bytes((value - 64) % 256 for value in range(256))
_YENC_AFTER_ESCAPE = bytes(0xFF if value == ord("=") else 0 for value in range(256))
# "(This file must be converted with BinHex 4.0)", or macutils' "; you knew that already.)"
_BINHEX_HEADER = re.compile(rb"\(This file must be converted")
_BINHEX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_BINHEX_TO_BASE64 = bytes.maketrans(_BINHEX_ALPHABET, _BASE64_ALPHABET)
_NOT_BINHEX = bytes(sorted(set(range(256)) - set(_BINHEX_ALPHABET)))
_BINHEX_REPEATS = re.compile(rb"((?:\x90[\x01-\xff])++)")  # 0x90 N: N-1 more of the previous byte
_BINHEX_HEADER_SLACK = 1 + 255 + 1 + 4 + 4 + 2 + 4 + 4 + 3 * 2  # name, fields, three CRCs
_BINHEX_FORK_LENGTHS = struct.Struct(">II")

_MIN_QP_ESCAPES = 16
_MIN_QP_SHARE = 0.1


@dataclass(frozen=True)
class EmbeddedFile:
    """A file found in the text: how it was encoded, the name the encoding gives, its bytes."""

    kind: str  # "base64" | "data-uri" | "uuencode" | "yenc" | "binhex" | "quoted-printable"
    name: str  # given by uuencode (also begin-base64), yEnc or BinHex, display_safe; else ""
    data: bytes


def looks_like_text(data: bytes) -> bool:
    """Whether data is worth scanning as text: no NUL in its first 64 KiB, and at least three
    bytes in four there are printable ASCII, whitespace, ESC or 8-bit (UTF-8, CP932, EUC-JP)."""
    sample = data[:_TEXT_SAMPLE]
    if b"\x00" in sample:
        return False
    other = len(sample.translate(None, _TEXT_BYTES))
    return other <= len(sample) * (1 - _MIN_TEXT_SHARE)


def embedded_files(text: bytes, *, max_output: int, min_size: int = 22) -> Iterator[EmbeddedFile]:
    """Every file the text carries in a text encoding, decoded, in this order: uuencode (and
    begin-base64, reported as "uuencode" with its name), yEnc and BinHex blocks; data: URIs;
    base64 runs of _MIN_BASE64_RUN characters or more, not hex digits only (hashes and IDs);
    the whole text as quoted-printable, when =XX escapes abound.

    Outputs smaller than min_size are skipped. Raises InspectionLimit when the yielded bytes
    would pass max_output, or the text holds more than MAX_BLOCKS encoded blocks; nothing else.
    Decoding is lenient: stray characters and bad lines are skipped, and checksums (yEnc
    CRC32, BinHex CRC-16) are not checked, so a BinHex file whose CRC does not match is still
    yielded: a recipient's tool may extract it all the same.
    """
    limits = _Limits(max_output, min_size)
    base64_blocks: list[tuple[int, int]] = []  # begin-base64 bodies: decoded once, not twice
    yield from limits.sized(_structured_files(text, limits, base64_blocks))
    uris = _data_uris(text, limits) if _DATA_SCHEME.search(text) else []
    yield from limits.sized(_data_uri_file(text, *uri) for uri in uris)
    skipped = sorted([*base64_blocks, *((start, end) for start, end, _ in uris)])
    yield from _base64_files(text, limits, skipped)
    yield from limits.sized(_quoted_printable(text, limits))


class _Limits:
    """The caps of one call: bytes handed out, and encoded blocks decoded."""

    def __init__(self, max_output: int, min_size: int):
        self.max_output = max_output
        self.min_size = min_size
        self.output = 0
        self.blocks = 0

    def count_block(self) -> None:
        self.blocks += 1
        if self.blocks > MAX_BLOCKS:
            raise InspectionLimit(f"the body holds more than {MAX_BLOCKS} text-encoded blocks")

    def room(self) -> int:
        return self.max_output - self.output

    def spend(self, size: int) -> None:
        if size > self.room():
            raise InspectionLimit(f"text-encoded data in the body expands beyond {self.max_output} bytes")
        self.output += size

    def sized(self, files: Iterator[EmbeddedFile]) -> Iterator[EmbeddedFile]:
        """The files of min_size or more, each paid for before it is handed out."""
        for found in files:
            if len(found.data) >= self.min_size:
                self.spend(len(found.data))
                yield found


# uuencode, yEnc and BinHex: blocks between a header line and an end marker


@dataclass(frozen=True)
class _Block:
    files: list[EmbeddedFile]
    body_end: int
    resume: int  # where the search for the next header goes on: after the end line, if any


def _structured_files(
    text: bytes, limits: _Limits, base64_blocks: list[tuple[int, int]]
) -> Iterator[EmbeddedFile]:
    """Each block in text order. A block ends at its end line, or else where the next header of
    any kind starts (real bodies never hold one), so a bogus header cannot swallow a block."""
    readers = {_UU_HEADER: _uuencode_block, _YENC_HEADER: _yenc_block, _BINHEX_HEADER: _binhex_block}
    upcoming = {pattern: pattern.search(text) for pattern in readers}
    while pending := [match for match in upcoming.values() if match is not None]:
        header = min(pending, key=lambda match: match.start())
        limits.count_block()
        _search_on(upcoming, text, header.end())
        next_header = min((match.start() for match in upcoming.values() if match), default=len(text))
        block = readers[header.re](text, header, next_header, limits)
        if header.re is _UU_HEADER and header.group("base64") is not None:
            base64_blocks.append((header.end(), block.body_end))
        yield from block.files


def _search_on(upcoming: dict[re.Pattern[bytes], re.Match[bytes] | None], text: bytes, position: int) -> None:
    """Search again from position for each header whose match starts before it. Matches kept
    lie past every block read since (a block stops at the next header), so no byte is searched
    twice by the same pattern."""
    for pattern, match in upcoming.items():
        if match is not None and match.start() < position:
            upcoming[pattern] = pattern.search(text, position)


def _uuencode_block(text: bytes, header: re.Match[bytes], stop_at: int, limits: _Limits) -> _Block:
    """`begin MODE NAME` ... `end`, or `begin-base64 MODE NAME` ... `====`."""
    is_base64 = header.group("base64") is not None
    end_line = (_UU_BASE64_END if is_base64 else _UU_END).search(text, header.end(), stop_at)
    body_end = end_line.start() if end_line else stop_at
    body = text[header.end() : body_end]
    data = _decode_base64(body) if is_base64 else _uudecode(body)
    name = display_safe(decode_unlabelled((header.group("name") or b"").strip()))
    return _Block([EmbeddedFile("uuencode", name, data)], body_end, end_line.end() if end_line else stop_at)


def _uudecode(body: bytes) -> bytes:
    """Each line as binascii.a2b_uu reads it, cut to the length its first character claims
    (trailing spaces that a mailer trimmed count as zeros); a line it refuses is skipped."""
    out = bytearray()
    for line in body.splitlines():
        line = line.rstrip()
        if not line:
            continue
        length = (line[0] - 0x20) & 0x3F
        try:
            out += binascii.a2b_uu(line[: 1 + (length * 4 + 2) // 3])
        except binascii.Error:
            continue
    return bytes(out)


def _yenc_block(text: bytes, header: re.Match[bytes], stop_at: int, limits: _Limits) -> _Block:
    """`=ybegin ... name=NAME` ... `=yend`, with any =ypart lines dropped."""
    end_line = _YENC_END.search(text, header.end(), stop_at)
    body_end = end_line.start() if end_line else stop_at
    body = _YENC_PART_LINE.sub(b"", text[header.end() : body_end]).translate(None, b"\r\n")
    named = _YENC_NAME.search(header.group("params"))
    name = display_safe(decode_unlabelled(named.group(1).strip() if named else b""))
    return _Block([EmbeddedFile("yenc", name, _ydecode(body))], body_end, end_line.end() if end_line else stop_at)


def _ydecode(body: bytes) -> bytes:
    """yEnc: "=" escapes the next byte, which is then 64 less; every byte is then 42 less.

    Done on whole strings, not byte by byte: each byte is paired with a flag saying "an = came
    before me", the escape characters' pairs are deleted, and the flags choose between each
    byte and the byte less 64."""
    body = body.replace(b"==", b"\xfd")  # an escaped "=" (read left to right, as decoders do)
    if body.endswith(b"="):
        body = body[:-1]  # escapes nothing
    pairs = bytearray(2 * len(body))
    pairs[0::2] = body
    pairs[3::2] = body[:-1].translate(_YENC_AFTER_ESCAPE)
    pairs = pairs.replace(b"=\x00", b"")  # no flag is ever "=", so this only hits whole pairs
    plain, escaped = bytes(pairs[0::2]), bytes(pairs[1::2])
    chosen = _choose(escaped, plain.translate(_YENC_MINUS_64), plain)
    return chosen.translate(_YENC_MINUS_42)


def _choose(mask: bytes, if_set: bytes, if_clear: bytes) -> bytes:
    """Bytewise if_set where mask is 0xFF, else if_clear (all three the same length)."""
    clear = int.from_bytes(if_clear, "big")
    chosen = clear ^ ((clear ^ int.from_bytes(if_set, "big")) & int.from_bytes(mask, "big"))
    return chosen.to_bytes(len(if_clear), "big")


def _binhex_block(text: bytes, header: re.Match[bytes], stop_at: int, limits: _Limits) -> _Block:
    """The `:`...`:` body after the BinHex 4.0 line: 6-bit characters (others ignored), runs
    expanded, then the header (name, type, creator, flags, fork lengths) and the two forks."""
    opening = text.find(b":", header.end(), stop_at)
    if opening < 0:
        return _Block([], stop_at, stop_at)
    closing = text.find(b":", opening + 1, stop_at)
    body_end = closing if closing >= 0 else stop_at
    six_bit = text[opening + 1 : body_end].translate(_BINHEX_TO_BASE64, _NOT_BINHEX)
    stream = _expand_runs(_decode_base64(six_bit), limits)
    name, forks = _binhex_forks(stream)
    return _Block([EmbeddedFile("binhex", name, fork) for fork in forks], body_end, min(body_end + 1, stop_at))


def _expand_runs(packed: bytes, limits: _Limits) -> bytes:
    """BinHex run-length coding: 0x90 N repeats the previous byte N-1 more times, 0x90 0 is a
    literal 0x90. Runs can expand 255-fold, so their size is checked before they are made."""
    pieces = _BINHEX_REPEATS.split(packed)  # literal bytes, repeats, literal bytes, ...
    if pieces[-1].endswith(b"\x90"):
        pieces[-1] = pieces[-1][:-1]  # a marker cut off before its count
    literals = [piece.replace(b"\x90\x00", b"\x90") for piece in pieces[0::2]]
    counts = [sum(repeats[1::2]) - len(repeats) // 2 for repeats in pieces[1::2]]
    if sum(map(len, literals)) + sum(counts) > limits.room() + _BINHEX_HEADER_SLACK:
        raise InspectionLimit(f"text-encoded data in the body expands beyond {limits.max_output} bytes")
    # each repeat follows a literal piece that is not empty, but for one at the very start
    pieces[0::2] = literals
    pieces[1::2] = [literal[-1:] * count for literal, count in zip(literals, counts)]
    return b"".join(pieces)


def _binhex_forks(stream: bytes) -> tuple[str, list[bytes]]:
    """The name and the non-empty forks (data, then resource) as far as the stream holds
    them; the CRC-16 after the header and after each fork is not checked."""
    if not stream:
        return "", []
    name_end = 1 + stream[0]
    lengths_at = name_end + 1 + 4 + 4 + 2  # version, type, creator, flags
    data_start = lengths_at + _BINHEX_FORK_LENGTHS.size + 2
    name = display_safe(decode_unlabelled(stream[1:name_end]))
    if len(stream) < data_start:
        return name, []
    data_length, resource_length = _BINHEX_FORK_LENGTHS.unpack_from(stream, lengths_at)
    data = stream[data_start : data_start + data_length]
    resource_start = data_start + data_length + 2
    resource = stream[resource_start : resource_start + resource_length]
    return name, [fork for fork in (data, resource) if fork]


# data: URIs and base64 runs

def _data_uris(text: bytes, limits: _Limits) -> list[tuple[int, int, bool]]:
    """Where each data: URI's payload starts and ends, and whether it is base64. A base64
    payload may wrap over lines like any base64 run; others end at a blank, quote or bracket."""
    uris = []
    for uri in _DATA_URI.finditer(text):
        limits.count_block()
        is_base64 = b";base64" in uri.group("params").lower()
        end = uri.end()
        if is_base64 and b"%" not in uri.group("payload"):
            wrapped = _BASE64_PAYLOAD.match(text, uri.start("payload"))
            end = max(end, wrapped.end()) if wrapped else end
        uris.append((uri.start("payload"), end, is_base64))
    return uris


def _data_uri_file(text: bytes, start: int, end: int, is_base64: bool) -> EmbeddedFile:
    payload = _percent_decode(text[start:end])
    return EmbeddedFile("data-uri", "", _decode_base64(payload) if is_base64 else payload)


def _percent_decode(payload: bytes) -> bytes:
    """%XX escapes decoded in C, as quoted-printable: "=" is first written "=3D", then each "%"
    followed by two hex digits becomes "="; a "%" that escapes nothing stays as it is."""
    if b"%" not in payload:
        return payload
    text = payload.replace(b"=", b"=3D")
    hex_digits = text.translate(_HEX_DIGIT_FLAGS) + b"\0\0"
    escapes = _both(text.translate(_PERCENT_FLAGS), _both(hex_digits[1:-1], hex_digits[2:]))
    return binascii.a2b_qp(_choose(escapes, b"=" * len(text), text))


def _both(mask: bytes, other: bytes) -> bytes:
    """Bytewise AND of two masks of the same length."""
    return (int.from_bytes(mask, "big") & int.from_bytes(other, "big")).to_bytes(len(mask), "big")


def _base64_regions(text: bytes) -> Iterator[tuple[int, int]]:
    """Stretches of text where a base64 run can be: around each row of _REGION_SEED base64
    characters, from the line before it to the line after, merged. Found with translate and
    find in C, so prose and markup cost next to nothing and only these go through the run
    regex (which reads some thirty MB/s). A run whose lines are all shorter than the seed is
    not looked for here: the caller's lenient decoding of the whole text covers it."""
    mask = text.translate(_BASE64_MASK)
    ends = text.translate(_LINE_END_MASK)  # one find reaches the nearest CR or LF, whichever
    seed = mask.find(_REGION_SEED_BYTES)
    region: tuple[int, int] | None = None
    while seed >= 0:
        run_end = mask.find(b" ", seed)
        run_end = len(text) if run_end < 0 else run_end
        line = ends.rfind(b"\n", 0, seed)
        start = ends.rfind(b"\n", 0, line) + 1 if line > 0 else 0  # the line before, too
        end = _end_of_line(ends, _end_of_line(ends, run_end) + 1)  # and the line after
        if region is not None and start <= region[1]:
            region = (region[0], max(region[1], end))
        else:
            if region is not None:
                yield region
            region = (start, end)
        seed = mask.find(_REGION_SEED_BYTES, run_end)
    if region is not None:
        yield region


def _end_of_line(ends: bytes, position: int) -> int:
    found = ends.find(b"\n", position) if position < len(ends) else -1
    return len(ends) if found < 0 else found


def _base64_files(text: bytes, limits: _Limits, skipped: list[tuple[int, int]]) -> Iterator[EmbeddedFile]:
    """Each base64 run outside the spans in skipped (sorted)."""
    next_span, covered_until = 0, 0
    runs = (run for start, end in _base64_regions(text)
            for run in _BASE64_RUN.finditer(text, start, end))
    for run in runs:
        start = run.start("run")
        while next_span < len(skipped) and skipped[next_span][0] <= start:
            covered_until = max(covered_until, skipped[next_span][1])
            next_span += 1
        if start >= covered_until:
            yield from _base64_run(run.group("run"), limits)


def _base64_run(run: bytes, limits: _Limits) -> Iterator[EmbeddedFile]:
    """The run decoded as one stream; and, when lines of another width lead into the block of
    equal lines (a word on a line of its own, a token that ends a line of prose), the block
    alone as well: that line would shift every group after it, and a recipient copies the block."""
    lines = _BASE64_LINE_BREAK_RE.split(run)
    yield from _base64_decoded(b"".join(lines), limits)
    block_start = _block_start(lines)
    if block_start > 0:
        yield from _base64_decoded(b"".join(lines[block_start:]), limits)


def _block_start(lines: list[bytes]) -> int:
    """The first of two consecutive lines of the most common width; 0 without such a pair."""
    if len(lines) < 3:
        return 0
    widths = list(map(len, lines))
    common_width = Counter(widths).most_common(1)[0][0]
    return max(bytes(map(common_width.__eq__, widths)).find(b"\x01\x01"), 0)


def _base64_decoded(run: bytes, limits: _Limits) -> Iterator[EmbeddedFile]:
    characters = run.translate(None, _NOT_BASE64)
    if len(characters) < _MIN_BASE64_RUN or not characters.translate(None, _HEX_DIGITS):
        return  # too short, or hex digits only: a hash or an ID, not an encoded file
    limits.count_block()
    size = len(characters) // 4 * 3 + max(len(characters) % 4 - 1, 0)
    if size >= limits.min_size:
        limits.spend(size)  # before decoding: the size is exact
        yield EmbeddedFile("base64", "", decode_base64_letters(characters))


def _decode_base64(text: bytes) -> bytes:
    """decode_base64_leniently, with the stray characters dropped by translate first: its
    regex would drop them one match at a time (a base64 body has a line break every line)."""
    return decode_base64_leniently(text.translate(None, _NOT_BASE64))


# quoted-printable

def _quoted_printable(text: bytes, limits: _Limits) -> Iterator[EmbeddedFile]:
    """The whole text decoded, when it holds 16 =XX escapes or more and they make up a tenth of
    it or more (counted by how much decoding shrinks it: two bytes an escape)."""
    if text.count(b"=") < _MIN_QP_ESCAPES:
        return
    decoded = binascii.a2b_qp(text)
    escapes = (len(text) - len(decoded)) // 2
    if escapes >= _MIN_QP_ESCAPES and escapes * 3 >= len(text) * _MIN_QP_SHARE:
        limits.count_block()
        yield EmbeddedFile("quoted-printable", "", decoded)
