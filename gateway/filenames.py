"""Decode attachment filenames as mail clients write them, and make any name safe to display.

Clients disagree about how to encode a filename: RFC 2231 (`filename*0*=UTF-8''...`), RFC 2047
encoded-words inside quotes (Outlook, often ISO-2022-JP), or raw 8-bit bytes in UTF-8 or CP932.
Every path here ends in a string: unknown charsets and broken encodings fall back, never raise.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from email.header import Header, decode_header
from email.message import Message

# compat32's parameter splitter is quadratic in the number of ';' inside quotes: cap what it sees.
_MAX_HEADER_CHARS = 16 * 1024
_MAX_EXTENSION_CHARS = 16

# the charset may be empty or unknown (clients write both): the bytes are then guessed
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?\s]*)\?=")
# Windows labels CP932 "Shift_JIS"; Python's shift_jis codec lacks its extensions (①, ㈱, ...).
_SHIFT_JIS_NAMES = frozenset(
    {"shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "csshiftjis", "windows-31j", "ms932"}
)
_ISO_2022_JP_NAMES = frozenset({"iso-2022-jp", "iso2022jp", "iso2022_jp", "csiso2022jp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_LINE_SEPARATORS = frozenset("\u2028\u2029")


def attachment_filename(part: Message) -> str:
    """The part's filename, decoded and display_safe; "" when it names none."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        name = display_safe(_decode_param(_param_value(part, header, param)))
        if name:
            return name
    return ""


def header_value(message: Message, name: str, limit: int = 500) -> str:
    """A header decoded for display on one line (as it is stored, then shown on the portal and
    in notices): RFC 2047 words leniently (unknown or empty charsets guessed), raw 8-bit bytes
    as UTF-8 or CP932, no controls or bidi overrides, runs of blanks as one, at most `limit`
    characters; never raises, never leaves surrogates."""
    text = _header_text(message, name)
    if "=?" in text:
        text = decode_encoded_words(text)
    return " ".join(clean_text(text).split())[:limit]


def has_filename_parameter(part: Message) -> bool:
    """Whether the part carries a filename or name parameter at all, even an empty one."""
    return (
        _param_value(part, "content-disposition", "filename") is not None
        or _param_value(part, "content-type", "name") is not None
    )


def display_safe(name: str, max_length: int = 200) -> str:
    """A single path component without control or bidi characters, NFC, at most max_length chars."""
    name = clean_text(name)
    name = re.split(r"[/\\]", name)[-1]
    name = unicodedata.normalize("NFC", name.lstrip(". ").rstrip())
    if len(name) <= max_length:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and len(extension) < min(_MAX_EXTENSION_CHARS, max_length - 1):
        return name[: max_length - len(extension) - 1] + "." + extension
    return name[:max_length]


def clean_text(text: str) -> str:
    """Drop control, bidi and line-separator characters; replace lone surrogates with U+FFFD."""
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc" or char in _BIDI_CONTROLS or char in _LINE_SEPARATORS:
            continue
        kept.append("\ufffd" if category == "Cs" else char)
    return "".join(kept)


def decode_bytes(raw: bytes, charset: str | None) -> str:
    """Decode with the declared charset; mislabelled or unknown charsets fall back to guessing."""
    name = (charset or "").strip().lower().partition("*")[0]  # RFC 2231 allows charset*language
    if name in _SHIFT_JIS_NAMES:
        name = "cp932"
    if name in _ISO_2022_JP_NAMES:
        return _decode_iso_2022_jp(raw)
    if name:
        try:
            return raw.decode(name)
        except (LookupError, ValueError):  # unknown or non-text codec, or bytes not in it
            pass
    return decode_unlabelled(raw)


def decode_unlabelled(raw: bytes) -> str:
    """Bytes of unknown charset: UTF-8, else CP932 (Japanese Windows), else UTF-8 with U+FFFD."""
    for charset in ("utf-8", "cp932"):
        try:
            return raw.decode(charset)
        except UnicodeDecodeError:
            pass
    return raw.decode("utf-8", errors="replace")


def decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded-words wherever they sit, even inside a quoted parameter."""
    pieces: list[tuple[bytes | str, str]] = []  # (bytes, charset) for words, (str, "") for text
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        between = text[position : match.start()]
        # whitespace between two encoded-words is folding, not content (RFC 2047 section 6.2)
        if between and not (between.isspace() and pieces and isinstance(pieces[-1][0], bytes)):
            pieces.append((between, ""))
        decoded = _decode_word(match.group(2), match.group(3))
        charset = match.group(1).lower()
        previous = pieces[-1][0] if pieces else ""
        if isinstance(previous, bytes) and pieces[-1][1] == charset:
            # a character may be split across adjacent words: join the bytes before decoding
            pieces[-1] = (previous + decoded, charset)
        else:
            pieces.append((decoded, charset))
        position = match.end()
    pieces.append((text[position:], ""))
    return "".join(
        decode_bytes(piece, charset) if isinstance(piece, bytes) else piece
        for piece, charset in pieces
    )


def _param_value(part: Message, header: str, param: str) -> str | tuple[str, str, str] | None:
    """A parameter as compat32 parses it, read from the header's original bytes."""
    text = _header_text(part, header)
    if not text:
        return None
    probe = Message()
    probe[header] = text[:_MAX_HEADER_CHARS]
    try:
        params = probe.get_params(header=header) or []
    except (TypeError, ValueError):
        # compat32 trips over some RFC 2231 mixes (filename*0= with filename*=): the
        # parameter is there but unreadable, so report it present and empty
        mentioned = re.search(rf"(?:^|[;\s]){param}\*?[0-9]*\*?\s*=", text, re.IGNORECASE)
        return "" if mentioned else None
    values = [value for key, value in params if key.lower() == param]
    # RFC 2231 values (tuples) win over plain ones, as RFC 2231 section 4 intends
    extended = [value for value in values if isinstance(value, tuple)]
    return (extended or values or [None])[0]


def _header_text(part: Message, header: str) -> str:
    """The header as text. compat32 hands 8-bit headers over as Header objects: use their bytes."""
    value = part.get(header)
    if value is None:
        return ""
    if isinstance(value, Header):
        return "".join(
            decode_bytes(chunk, None if charset == "unknown-8bit" else charset)
            for chunk, charset in _header_chunks(value)
        )
    return str(value)


def _header_chunks(value: Header) -> list[tuple[bytes, str | None]]:
    chunks: list[tuple[bytes, str | None]] = []
    for chunk, charset in decode_header(value):
        raw = chunk if isinstance(chunk, bytes) else chunk.encode("utf-8", "surrogateescape")
        chunks.append((raw, charset))
    return chunks


def _decode_param(value: str | tuple[str, str, str] | None) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        charset, _language, encoded = value
        text = decode_bytes(_as_bytes(encoded), charset)
    elif "\x1b" in value:  # raw ISO-2022-JP straight in the header (old Japanese mailers)
        text = _decode_iso_2022_jp(_as_bytes(value))
    else:
        text = value
    return decode_encoded_words(text) if "=?" in text else text


def _as_bytes(text: str) -> bytes:
    """RFC 2231 values arrive as one char per byte (latin-1); anything wider is already text."""
    try:
        return text.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _decode_word(encoding: str, encoded: str) -> bytes:
    """An encoded-word's bytes, leniently: stray characters and bad padding are dropped."""
    data = encoded.encode("ascii", "replace")
    if encoding in "qQ":
        return binascii.a2b_qp(data, header=True)
    return decode_base64_leniently(data)


_NOT_BASE64_LETTER = bytes(sorted(set(range(256)) - set(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")))


def decode_base64_leniently(data: bytes) -> bytes:
    """Every whole byte base64 text holds, as mail clients read it: stray characters ignored."""
    return decode_base64_letters(data.translate(None, _NOT_BASE64_LETTER))


def decode_base64_letters(letters: bytes | memoryview) -> bytes:
    """Base64 letters (nothing else among them) decoded; a lone last letter carries no whole
    byte. Copies nothing but the output when the letters come in whole groups of four."""
    rest = len(letters) % 4
    if rest == 0:
        return binascii.a2b_base64(letters)
    whole = len(letters) - rest
    tail = bytes(letters[whole:]) + b"=" * (4 - rest) if rest > 1 else b""
    return binascii.a2b_base64(bytes(letters[:whole]) + tail)


def _decode_iso_2022_jp(raw: bytes) -> str:
    try:
        return raw.decode("iso2022_jp")
    except UnicodeDecodeError:
        pass
    if any(byte >= 0x80 for byte in raw):  # not 7-bit JIS at all: a mislabelled 8-bit charset
        return decode_unlabelled(raw)
    # Outlook writes Windows extensions (NEC row 13: ①, Ⅰ, ㈱) that the strict codec refuses;
    # they decode once the JIS pairs are moved to their CP932 positions.
    return _iso_2022_jp_to_cp932(raw).decode("cp932", errors="replace")


def _iso_2022_jp_to_cp932(raw: bytes) -> bytes:
    out = bytearray()
    mode = "ascii"
    index = 0
    while index < len(raw):
        escape = raw[index + 1 : index + 3] if raw[index] == 0x1B else b""
        if escape in (b"$B", b"$@", b"(B", b"(J", b"(I"):
            mode = {b"$B": "kanji", b"$@": "kanji", b"(I": "kana"}.get(escape, "ascii")
            index += 3
            continue
        first = raw[index]
        second = raw[index + 1] if index + 1 < len(raw) else 0
        if mode == "kanji" and 0x21 <= first <= 0x7E and 0x21 <= second <= 0x7E:
            out += _jis_pair_to_cp932(first, second)
            index += 2
            continue
        out.append(first + 0x80 if mode == "kana" and 0x21 <= first <= 0x5F else first)
        index += 1
    return bytes(out)


def _jis_pair_to_cp932(first: int, second: int) -> bytes:
    lead = (first - 0x21) // 2 + 0x81
    if lead > 0x9F:
        lead += 0x40
    if first % 2:
        trail = second + 0x1F + (1 if second >= 0x60 else 0)
    else:
        trail = second + 0x7E
    return bytes((lead, trail))
