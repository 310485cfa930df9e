"""embedded_files and looks_like_text: a real encrypted ZIP, encoded as senders' tools encode it,
decodes back to exactly its bytes; vectors from independent encoders decode as their tools meant;
prose, Japanese, HTML and PGP text yield no ZIP; the caps on output and blocks hold, and
adversarial text of many megabytes is scanned in linear time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import quopri
import random
import struct
import time
import urllib.parse
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.containers.base import InspectionLimit
from gateway.containers.embedded import MAX_BLOCKS, EmbeddedFile, embedded_files, looks_like_text

CORPUS_FILES = Path(__file__).resolve().parents[1] / "corpus" / "files"
ZIP = (CORPUS_FILES / "01_aes256_7zip_ja.zip").read_bytes()
LIMIT = 64 * 1024 * 1024
BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
BINHEX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
BINHEX_BANNER = b"(This file must be converted with BinHex 4.0)"


def scan(text: bytes, *, max_output: int = LIMIT, min_size: int = 22) -> list[EmbeddedFile]:
    return list(embedded_files(text, max_output=max_output, min_size=min_size))


def zips_in(text: bytes) -> list[EmbeddedFile]:
    """The outputs that are exactly the ZIP."""
    return [found for found in scan(text) if found.data == ZIP]


# --- encoders as senders' tools write -----------------------------------------------------------

def uuencode(data: bytes, name: str, *, backtick: bool = True) -> bytes:
    """As GNU sharutils' uuencode writes it: 45 bytes a line, "`" for zero, a "`" line, end."""
    lines = [binascii.b2a_uu(data[i : i + 45], backtick=backtick) for i in range(0, len(data), 45)]
    return b"begin 644 " + name.encode() + b"\n" + b"".join(lines) + b"`\nend\n"


def yenc_characters(byte: int) -> bytes:
    """One byte as yEnc writes it: plus 42; NUL, LF, CR and "=" escaped as "=" and plus 64."""
    value = (byte + 42) % 256
    return bytes((0x3D, (value + 64) % 256)) if value in (0x00, 0x0A, 0x0D, 0x3D) else bytes((value,))


def yencode(data: bytes, name: str, *, line_length: int = 128, part: tuple[int, int, int] | None = None) -> bytes:
    """A yEnc block (yEnc 1.3): lines of line_length, an escape never split; part is
    (number, first byte, last byte) counted from 1, as =ypart says."""
    lines, line = [], bytearray()
    for byte in data:
        line += yenc_characters(byte)
        if len(line) >= line_length:
            lines.append(bytes(line))
            line = bytearray()
    lines.append(bytes(line))
    if part is None:
        head = f"=ybegin line={line_length} size={len(data)} name={name}\n"
        tail = f"=yend size={len(data)} crc32={zlib.crc32(data):08x}\n"
    else:
        number, first, last = part
        head = (
            f"=ybegin part={number} line={line_length} size={len(ZIP)} name={name}\n"
            f"=ypart begin={first} end={last}\n"
        )
        tail = f"=yend size={len(data)} part={number} pcrc32={zlib.crc32(data):08x}\n"
    return head.encode() + b"\n".join(lines) + b"\n" + tail.encode()


def binhex_stream(name: bytes, data: bytes, resource: bytes = b"", file_type: bytes = b"TEXT",
                  creator: bytes = b"MACA") -> bytes:
    """BinHex 4.0 before run-length coding: header, data fork, resource fork, each followed by
    its CRC-16/XMODEM (binascii.crc_hqx from 0, as macutils and Python's old binhex module)."""
    lengths = struct.pack(">HII", 0, len(data), len(resource))  # flags, then the two fork lengths
    header = bytes([len(name)]) + name + b"\0" + file_type + creator + lengths
    return b"".join(part + struct.pack(">H", binascii.crc_hqx(part, 0)) for part in (header, data, resource))


def run_length_encode(stream: bytes) -> bytes:
    """macutils' choices: a run of five or more of a byte other than 0x90 becomes the byte, 0x90
    and the count (at most 255); every 0x90 is written 0x90 0x00."""
    out, index = bytearray(), 0
    while index < len(stream):
        byte, run = stream[index], 1
        while index + run < len(stream) and stream[index + run] == byte and run < 255:
            run += 1
        if byte == 0x90:
            out += b"\x90\x00" * run
        elif run >= 5:
            out += bytes((byte, 0x90, run))
        else:
            out += bytes((byte,)) * run
        index += run
    return bytes(out)


def literally(stream: bytes) -> bytes:
    """A stream run-length coded without runs: only 0x90 escaped."""
    return stream.replace(b"\x90", b"\x90\x00")


def hqx_text(packed: bytes, banner: bytes = BINHEX_BANNER) -> bytes:
    """The banner, then ":" 6-bit characters ":" in lines of 64, as BinHex 4.0 writes them."""
    to_binhex = bytes.maketrans(BASE64_ALPHABET, BINHEX_ALPHABET)
    six_bit = base64.b64encode(packed).rstrip(b"=").translate(to_binhex)
    body = b":" + six_bit + b":"
    return banner + b"\n\n" + b"\n".join(body[i : i + 64] for i in range(0, len(body), 64)) + b"\n"


def binhex(name: bytes, data: bytes, resource: bytes = b"", **fields: bytes) -> bytes:
    return hqx_text(run_length_encode(binhex_stream(name, data, resource, **fields)))


def wrapped(text: bytes, width: int, line_end: bytes = b"\n") -> bytes:
    return b"".join(text[i : i + width] + line_end for i in range(0, len(text), width))


# --- base64 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_base64_pasted_into_a_message_decodes_to_the_zip(line_end: bytes) -> None:
    body = base64.encodebytes(ZIP).replace(b"\n", line_end)
    text = line_end.join([b"Hello,", b"the quote is attached as text, see below:", b""]) + body + b"Regards" + line_end
    assert [found.kind for found in zips_in(text)] == ["base64"]


@pytest.mark.parametrize("prefix", [b"> ", b">> ", b"> > ", b">"])
def test_base64_in_a_quoted_reply_decodes_to_the_zip(prefix: bytes) -> None:
    # the reply quotes each line, and some clients leave trailing blanks on quoted lines
    lines = [b"On Monday you wrote:", *base64.encodebytes(ZIP).splitlines(), b"", b"Thanks"]
    text = b"Thank you!\r\n\r\n" + b"".join(prefix + line + b"  \r\n" for line in lines)
    assert [found.kind for found in zips_in(text)] == ["base64"]


@pytest.mark.parametrize(
    "template",
    [
        b'{"name": "quote.zip", "content": "%s", "size": 6878}',
        b'<input type="hidden" name="blob" value="%s"><p>sent</p>',
        b"attachment=%s;",
    ],
    ids=["json", "html-attribute", "inline"],
)
def test_base64_on_one_line_inside_json_or_html_decodes_to_the_zip(template: bytes) -> None:
    assert len(zips_in(template % base64.b64encode(ZIP))) == 1


def test_padding_ends_a_run_so_two_streams_back_to_back_decode_separately() -> None:
    other = bytes(range(40, 140))  # 100 bytes: its base64 ends with "=" as well
    text = b"files: " + base64.b64encode(ZIP) + base64.b64encode(other) + b"\n"
    assert [found.data for found in scan(text)] == [ZIP, other]


@pytest.mark.parametrize(
    "lead",
    [b"Hello\nWorld\n", b"Attachment\r\n", b"see the file: " + base64.b64encode(ZIP)[:70] + b"\n"],
    ids=["word-lines", "word-line-crlf", "starts-mid-line"],
)
def test_a_line_before_the_base64_lines_does_not_hide_the_zip(lead: bytes) -> None:
    """A word on its own line would shift every group if taken into the run; base64 that starts
    in the middle of a line (70 characters, not a multiple of 4) must keep that first piece."""
    encoded = base64.b64encode(ZIP)
    rest = encoded[70:] if lead.startswith(b"see") else encoded
    line_end = b"\r\n" if lead.endswith(b"\r\n") else b"\n"
    assert len(zips_in(lead + wrapped(rest, 76, line_end))) == 1


def test_base64_in_a_narrow_column_decodes_to_the_zip() -> None:
    """Lines shorter than 32 characters still make a run: each one goes on to the next."""
    assert len(zips_in(b"Narrow:\n" + wrapped(base64.b64encode(ZIP), 20))) == 1


def test_hashes_ids_and_short_tokens_are_not_base64() -> None:
    text = (
        b"sha256: " + hashlib.sha256(ZIP).hexdigest().encode() + b"\n\n"
        b"(commit 9fceb02d0ae598e95dc970b74767f19372d61af8) "
        b"id 123e4567-e89b-12d3-a456-426614174000, see https://example.com/a/b/c/d/e?x=1\n"
        b"ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789\n"
    )
    assert scan(text) == []


# --- data: URIs ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "html",
    [
        b'<a href="data:application/zip;base64,%s" download="quote.zip">quote</a>' % base64.b64encode(ZIP),
        b"<a href='DATA:application/zip;name=quote.zip;BASE64,%s'>quote</a>" % base64.b64encode(ZIP),
        b'<a href="data:application/zip;base64,%s">quote</a>' % wrapped(base64.b64encode(ZIP), 76).strip(),
        b'<a href="data:application/zip,%s">quote</a>' % urllib.parse.quote_from_bytes(ZIP).encode(),
        b'<a href="data:application/zip;base64,%s">quote</a>'
        % urllib.parse.quote_from_bytes(base64.b64encode(ZIP)).encode(),
    ],
    ids=["base64", "upper-case-and-parameters", "base64-wrapped", "percent-encoded", "percent-encoded-base64"],
)
def test_html_data_uri_link_decodes_to_the_zip_once(html: bytes) -> None:
    text = b"<html><body><p>Please download:</p>" + html + b"</body></html>"
    assert [found.kind for found in zips_in(text)] == ["data-uri"]


# --- uuencode -----------------------------------------------------------------------------------

def test_uuencode_written_here_is_byte_identical_to_gnu_sharutils() -> None:
    # sha256 of `uuencode 01_aes256_7zip_ja.zip 'ファイル.zip'` (GNU sharutils 4.15.2, Debian 12)
    written = uuencode(ZIP, "ファイル.zip")
    assert hashlib.sha256(written).hexdigest() == "b560041d7e9cf01086d15513be35e2d1d93721cc3d7915123cfe959675546b56"


def test_uuencode_with_a_japanese_name_decodes_to_the_zip_and_the_name() -> None:
    text = b"Hi,\n\n" + uuencode(ZIP, "見積書 2024.zip") + b"\n-- \nTaro\n"
    assert [(found.kind, found.name) for found in zips_in(text)] == [("uuencode", "見積書 2024.zip")]


def trimmed_spaces(text: bytes) -> bytes:
    return b"\n".join(line.rstrip(b" ") for line in text.split(b"\n"))


def check_characters(text: bytes) -> bytes:
    return b"\n".join(line + b"X" if line.startswith(b"M") else line for line in text.split(b"\n"))


def stray_line(text: bytes) -> bytes:
    lines = text.split(b"\n")
    return b"\n".join(lines[:40] + [b"this line is not uuencode at all"] + lines[40:])


@pytest.mark.parametrize(
    ("damage", "backtick"),
    [(trimmed_spaces, False), (check_characters, True), (stray_line, True)],
    ids=["trailing-spaces-trimmed", "check-characters", "stray-line"],
)
def test_uuencode_lines_as_mailers_and_encoders_change_them_still_decode(damage, backtick: bool) -> None:
    """Old uuencode writes zeros as spaces, which mailers trim (decoders pad them back); some
    encoders end each line with a check character; a stray line in the middle is skipped."""
    text = damage(uuencode(ZIP, "quote.zip", backtick=backtick)).replace(b"\n", b"\r\n")
    assert [(found.kind, found.name) for found in zips_in(text)] == [("uuencode", "quote.zip")]


def test_begin_base64_decodes_once_with_its_name() -> None:
    text = b"begin-base64 644 quote.zip\n" + base64.encodebytes(ZIP) + b"====\n"
    found = scan(text)
    assert [(one.kind, one.name, one.data == ZIP) for one in found] == [("uuencode", "quote.zip", True)]


@pytest.mark.parametrize(
    "bogus",
    [b"begin 644 nothing.bin\n", b"=ybegin line=128 size=100 name=nothing.bin\n", BINHEX_BANNER + b"\n"],
    ids=["uuencode", "yenc", "binhex"],
)
def test_a_header_without_its_end_does_not_swallow_the_next_block(bogus: bytes) -> None:
    for block in (uuencode(ZIP, "quote.zip"), yencode(ZIP, "quote.zip"), binhex(b"quote.zip", ZIP)):
        assert [found.name for found in zips_in(bogus + block)] == ["quote.zip"]


# --- yEnc ----------------------------------------------------------------------------------------

def test_yenc_encoder_here_matches_a_published_vector() -> None:
    # sabnzbd/sabctools tests/test_encoder.py: yEnc of b"Hello world!"
    assert b"".join(map(yenc_characters, b"Hello world!")) == b"r\x8f\x96\x96\x99J\xa1\x99\x9c\x96\x8eK"


def test_yenc_vectors_from_independent_encoders_decode() -> None:
    # the vector above, framed; and `uuenview -y crit.bin` (uudeview 0.5.20, Debian 12) of bytes
    # that need every escape: NUL, LF, CR and "=" (here 0xd6, 0xe0, 0xe3, 0x13 before adding 42)
    hello = b"=ybegin line=128 size=12 name=hello.txt\nr\x8f\x96\x96\x99J\xa1\x99\x9c\x96\x8eK\n=yend size=12\n"
    critical = b"=ybegin line=128 size=11 name=crit.bin\n*47g=}=J=M=@3JX\n=yend size=11 crc32=f99854a7\n"
    found = scan(hello + critical, min_size=1)
    assert [(one.name, one.data) for one in found] == [
        ("hello.txt", b"Hello world!"),
        ("crit.bin", b"\x00\x0a\x0d\x3d\x13\xe0\xe3\xd6\x09\x20\x2e"),
    ]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_yenc_of_the_zip_decodes_to_it_with_its_name(line_end: bytes) -> None:
    text = b"Here it is:\n" + yencode(ZIP, "見積書.zip").replace(b"\n", line_end) + b"bye\n"
    assert [(found.kind, found.name) for found in zips_in(text)] == [("yenc", "見積書.zip")]


def test_yenc_in_two_parts_decodes_part_by_part() -> None:
    half = len(ZIP) // 2
    first = yencode(ZIP[:half], "quote.zip", part=(1, 1, half))
    text = first + yencode(ZIP[half:], "quote.zip", part=(2, half + 1, len(ZIP)))
    found = scan(text)
    assert [one.kind for one in found] == ["yenc", "yenc"]
    assert found[0].data + found[1].data == ZIP


# --- BinHex 4.0 ----------------------------------------------------------------------------------

# `binhex two.bin` (macutils 2.0b3, Debian 12), two.bin a MacBinary file holding the name
# "二つのフォーク.txt" (UTF-8), type TEXT, creator ttxt, and the forks below: runs of 0x90 and of
# zeros exercise the run-length coding, and macutils writes its own banner line.
MACUTILS_TWO_FORKS = b"""(This file must be converted; you knew that already.)

:'H5kM11"T11"VZ1$PH1#UH1$[11#VbjdH(3!9%9B9(4dH(3!!!!!!6J!!!!i%De
NBA4K)'C[FQXk)!!"!J-%"3B(#!N+#``0$Jm3%4)6&"8@&aJC'KXF(4iI)#%L)b3
P*LFS+5SV,#dZ,c!a-M-d06Bh1$Nk1c`p2Mp!38*$4%9'4dK*5NY-68j28&&58e4
99PGB@9TEA&eHAf"KBQ0NC@CRD'PUDfaYEQp`FA*cG(9fGhKjHRYmIAjrJ)'#Ji5
&KSH)LBU,M)f1Mj!!NC+6P*@@PjLCQTZFRCkIS+'LSk5PTUHSUDUVV+fZVl#aXV1
dYEDhZ,QkZlbp[Vr!`F,$a-A'amM*bX[-cFl2d0(5dp69eYIBfGVEh0hHhq$KiZ2
NjHERk1RUkqcYlZr`mI,cp2AfprMjq[[mrIlrN!#3!*!!N!#3!!#3+%UYFQ9cEh9
bBf8JCQpbDb"bCA0[GA*MC5"QEh*V)(*PFfpeFQ0P)'C[FQXJFQ9cEh9bBf8JCQp
bDb$8,3:
"""
TWO_FORKS_NAME = "二つのフォーク.txt"
TWO_FORKS_DATA = b"data fork: " + bytes(range(256)) + b"\x90" * 5 + b"\x00" * 40
TWO_FORKS_RESOURCE = b"resource fork " * 4


def test_binhex_from_macutils_decodes_both_forks_and_the_name() -> None:
    found = scan(MACUTILS_TWO_FORKS)
    assert [(one.kind, one.name, one.data) for one in found] == [
        ("binhex", TWO_FORKS_NAME, TWO_FORKS_DATA),
        ("binhex", TWO_FORKS_NAME, TWO_FORKS_RESOURCE),
    ]


def test_binhex_encoder_here_is_byte_identical_to_macutils() -> None:
    name = TWO_FORKS_NAME.encode()
    written = binhex(name, TWO_FORKS_DATA, TWO_FORKS_RESOURCE, file_type=b"TEXT", creator=b"ttxt")
    assert written.split(b"\n\n", 1)[1] == MACUTILS_TWO_FORKS.split(b"\n\n", 1)[1]
    # and for the ZIP: sha256 of the body of `binhex -d 01_aes256_7zip_ja.zip`, stored as z.zip
    body = binhex(b"z.zip", ZIP).split(b"\n\n", 1)[1].strip()
    assert hashlib.sha256(body).hexdigest() == "beef99e19eaafb676bcb798cfc124728892aa3cd6f7d2020a98f6a785117ae72"


def test_binhex_of_the_zip_decodes_to_it_with_its_name() -> None:
    text = b"Mac users, here you go:\r\n\r\n" + binhex("見積書.zip".encode(), ZIP).replace(b"\n", b"\r")
    assert [(found.kind, found.name) for found in zips_in(text)] == [("binhex", "見積書.zip")]


@pytest.mark.parametrize(
    ("packed_data", "data"),
    [
        (b"\x90\x00\x90\x04", b"\x90" * 4),  # a run of the literal 0x90
        (b"A\x90\x03\x90\x03", b"A" * 5),  # runs one after another repeat the same byte
        (b"AB\x90\x01C", b"ABC"),  # a count of 1 adds nothing
        (b"A\x90\x90", b"A" * 0x90),  # the count may itself be 0x90
    ],
)
def test_binhex_run_length_corner_cases(packed_data: bytes, data: bytes) -> None:
    stream = binhex_stream(b"rle.bin", data)
    header_end = len(stream) - len(data) - 4
    packed = literally(stream[:header_end]) + packed_data + literally(stream[header_end + len(data) :])
    assert [found.data for found in scan(hqx_text(packed), min_size=1)] == [data]


def test_binhex_run_before_the_first_byte_and_a_marker_cut_off_at_the_end_add_nothing() -> None:
    packed = b"\x90\x05" + literally(binhex_stream(b"quote.zip", ZIP)) + b"\x90"
    assert [found.name for found in zips_in(hqx_text(packed))] == ["quote.zip"]


def test_binhex_cut_off_after_a_run_marker_yields_the_fork_without_it() -> None:
    data = b"abc\x90def" * 10
    packed = literally(binhex_stream(b"cut.bin", data))
    cut = packed.index(b"abc\x90") + 4  # the 0x90 0x00 of the first literal 0x90, cut in two
    assert [found.data for found in scan(hqx_text(packed[:cut]), min_size=1)] == [b"abc"]


def test_binhex_with_a_wrong_crc_still_yields_the_data_fork() -> None:
    stream = bytearray(binhex_stream(b"quote.zip", ZIP))
    header_crc_at = 1 + len(b"quote.zip") + 1 + 4 + 4 + 2 + 8
    stream[header_crc_at] ^= 0xFF  # header CRC
    stream[-4] ^= 0xFF  # data fork CRC
    assert [found.name for found in zips_in(hqx_text(literally(bytes(stream))))] == ["quote.zip"]


def test_binhex_run_length_bomb_stops_at_the_limit() -> None:
    stream = binhex_stream(b"bomb.bin", b"A" * (100 * 255))
    header_end = len(stream) - 100 * 255 - 4
    packed = literally(stream[:header_end]) + b"A" + b"\x90\xff" * 100_000  # 25 MB from 200 kB
    with pytest.raises(InspectionLimit) as refused:
        scan(hqx_text(packed), max_output=1_000_000)
    assert refused.value.reason == "text-encoded data in the body expands beyond 1000000 bytes"


# --- quoted-printable ----------------------------------------------------------------------------

def test_unlabelled_quoted_printable_decodes_to_the_zip() -> None:
    text = quopri.encodestring(ZIP)
    assert [found.kind for found in zips_in(text)] == ["quoted-printable"]


def test_prose_with_a_few_escapes_is_not_taken_for_quoted_printable() -> None:
    text = (b"Caf=C3=A9 au lait, s'il vous pla=C3=AEt. " * 3 + b"The rest is plain English text. " * 40) * 2
    assert [found.kind for found in scan(text)] == []


# --- text that carries no file -------------------------------------------------------------------

PROSE = b"""Hi Hanako,

Thanks for the call today. As discussed, the revised quote is in the shared folder at
https://files.example.com/projects/2024/acme-renewal/quotes/revision-3/final-version.pdf
and the password will follow in a separate message (per company policy).

> Could you also send the spreadsheet?
> We need it before Friday's meeting with procurement.

Sure - I'll send it tomorrow morning.

Best regards,
Taro Yamada
Sales Department, Example Trading Co., Ltd.
Tel: +81-3-1234-5678
"""

JAPANESE = """山田様

いつもお世話になっております。株式会社サンプル商事の鈴木です。
先日ご依頼いただきましたお見積書を、別途ダウンロードリンクにてお送りいたします。
パスワードは別メールにてお知らせいたします。ご確認のほど、よろしくお願いいたします。

＝＝＝＝＝＝＝＝＝＝＝＝＝＝＝＝
株式会社サンプル商事　営業部　鈴木一郎
〒100-0001 東京都千代田区千代田1-1
"""

# a 1x1 transparent PNG, as e-mail templates inline their spacer images
PNG_URI = b"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="

HTML = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>
body { font-family: "Helvetica Neue", Arial, sans-serif; color: #333333; margin: 0 auto; }
.header { background: url(%s) no-repeat top left; padding: 12px 24px; }
a.button { display: inline-block; border-radius: 4px; background-color: #0A66C2; color: #FFFFFF; }
@media only screen and (max-width: 600px) { .content { width: 100%% !important; } }
</style></head>
<body><div class="header"><img src="%s" width="1" height="1" alt=""></div>
<div class="content"><p>Dear customer,</p>
<p>Your invoice is ready: <a class="button" href="https://billing.example.com/invoices/2024/INV-000123?utm_source=email&amp;utm_medium=button">View invoice</a></p>
</div></body></html>
""" % (PNG_URI, PNG_URI)


def pgp_message() -> bytes:
    packets = random.Random(7).randbytes(700)
    crc = base64.b64encode(zlib.crc32(packets).to_bytes(4, "big")[1:])
    return (
        b"-----BEGIN PGP MESSAGE-----\nVersion: GnuPG v2\n\n"
        + wrapped(base64.b64encode(packets), 64)
        + b"=" + crc + b"\n-----END PGP MESSAGE-----\n"
    )


@pytest.mark.parametrize(
    "text",
    [PROSE, JAPANESE.encode(), JAPANESE.encode("iso2022_jp"), JAPANESE.encode("cp932"), HTML, pgp_message()],
    ids=["prose", "japanese-utf8", "japanese-iso-2022-jp", "japanese-cp932", "html", "pgp"],
)
def test_text_without_a_file_yields_no_zip(text: bytes) -> None:
    found = scan(text)
    assert not any(ZIP in one.data or one.data.startswith(b"PK\x03\x04") for one in found)


def test_prose_and_japanese_yield_nothing_at_all_even_tiny_blobs() -> None:
    for text in (PROSE, JAPANESE.encode(), JAPANESE.encode("iso2022_jp"), JAPANESE.encode("cp932")):
        assert scan(text, min_size=1) == []


def test_html_yields_only_its_inline_png() -> None:
    png = base64.b64decode(PNG_URI.partition(b",")[2])
    assert [(found.kind, found.data) for found in scan(HTML)] == [("data-uri", png), ("data-uri", png)]


# --- limits --------------------------------------------------------------------------------------

ENCODED_ZIPS = {
    "base64": base64.encodebytes(ZIP),
    "data-uri": b'<a href="data:application/zip;base64,%s">x</a>' % base64.b64encode(ZIP),
    "uuencode": uuencode(ZIP, "quote.zip"),
    "yenc": yencode(ZIP, "quote.zip"),
    "binhex": binhex(b"quote.zip", ZIP),
    "quoted-printable": quopri.encodestring(ZIP),
}


@pytest.mark.parametrize("kind", ENCODED_ZIPS)
def test_output_beyond_max_output_raises_naming_the_limit(kind: str) -> None:
    just_enough = scan(ENCODED_ZIPS[kind], max_output=len(ZIP))
    assert [found.kind for found in just_enough if found.data == ZIP] == [kind]
    with pytest.raises(InspectionLimit) as refused:
        scan(ENCODED_ZIPS[kind], max_output=len(ZIP) - 1)
    assert refused.value.reason == f"text-encoded data in the body expands beyond {len(ZIP) - 1} bytes"


def test_the_limit_counts_every_file_of_the_call() -> None:
    text = ENCODED_ZIPS["uuencode"] + b"\n" + ENCODED_ZIPS["base64"]
    assert len(scan(text, max_output=2 * len(ZIP))) == 2
    with pytest.raises(InspectionLimit):
        scan(text, max_output=2 * len(ZIP) - 1)


def test_more_than_max_blocks_raise_naming_the_limit() -> None:
    assert scan(b"begin 644 x\nend\n" * MAX_BLOCKS) == []
    with pytest.raises(InspectionLimit) as refused:
        scan(b"begin 644 x\nend\n" * (MAX_BLOCKS + 1))
    assert refused.value.reason == f"the body holds more than {MAX_BLOCKS} text-encoded blocks"


def test_outputs_below_min_size_are_skipped() -> None:
    text = uuencode(b"twenty-one bytes long", "small.txt")
    assert scan(text) == []
    assert [found.data for found in scan(text, min_size=21)] == [b"twenty-one bytes long"]


# --- looks_like_text -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PROSE, True),
        (JAPANESE.encode(), True),
        (JAPANESE.encode("cp932"), True),
        (JAPANESE.encode("iso2022_jp"), True),
        (yencode(ZIP, "quote.zip"), True),  # a tenth of yEnc is raw control bytes, by design
        (ENCODED_ZIPS["binhex"], True),
        (ZIP, False),
        (b"hello\x00world", False),
        (bytes(range(1, 32)) * 100 + PROSE, False),
        (PROSE * 2000 + b"\x00", True),  # only the first 64 KiB are read
    ],
    ids=["prose", "utf-8", "cp932", "iso-2022-jp", "yenc", "binhex", "zip", "nul", "control-bytes", "nul-late"],
)
def test_looks_like_text(data: bytes, expected: bool) -> None:
    assert looks_like_text(data) is expected


# --- hostile input -------------------------------------------------------------------------------

MB = 1024 * 1024


# Built on demand, one per test: all of them at once are some 235 MB.
ADVERSARIAL_INPUTS: dict[str, Callable[[], bytes]] = {
    "20 MB of A": lambda: b"A" * (20 * MB),
    "20 MB of begin lines": lambda: b"begin 644 x\n" * (20 * MB // 12),
    "20 MB of =ybegin lines": lambda: b"=ybegin line=128 size=10 name=x\n" * (20 * MB // 32),
    "20 MB of bare =ybegin lines": lambda: b"=ybegin\n" * (20 * MB // 8),
    "5 MB of quote prefixes": lambda: b"> \n" * (5 * MB // 3),
    "20 MB of BinHex banners, no colon": lambda: (BINHEX_BANNER + b"\n") * (20 * MB // 46),
    "20 MB of one-word lines": lambda: b"word\n" * (20 * MB // 5),
    "20 MB of uuencode": lambda: b"begin 644 x\n" + (b"M" + b"A" * 60 + b"\n") * (20 * MB // 62) + b"end\n",
    "20 MB of yEnc escapes": lambda: b"=ybegin line=128 size=1 name=x\n" + b"=A" * (10 * MB) + b"\n=yend\n",
    "10 MB of BinHex run markers": lambda: hqx_text(b"A\x90\x02" * (5 * MB // 2)),
    "20 MB of data: URIs": lambda: b"data:;base64,AAAA " * (20 * MB // 18),
    "20 MB of percent escapes": lambda: b"data:application/zip," + b"%4" * (10 * MB),
    "20 MB of quoted-printable": lambda: b"=41" * (20 * MB // 3),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL_INPUTS))
def test_adversarial_text_is_scanned_in_linear_time(name: str) -> None:
    text = ADVERSARIAL_INPUTS[name]()
    started = time.monotonic()
    try:
        for found in embedded_files(text, max_output=LIMIT):
            assert isinstance(found.data, bytes)
    except InspectionLimit:
        pass
    assert time.monotonic() - started < 10  # a generous bound: the machine is shared


FRAGMENTS = [
    b"begin 644 x\n", b"begin-base64 644 y\n", b"end\n", b"====\n", b"`\n", b"M86)C\n",
    b"=ybegin line=128 size=3 name=z\n", b"=ypart begin=1 end=3\n", b"=yend size=3\n",
    BINHEX_BANNER + b"\n", b":", b"\x90", b"\x90\x00", b"!!!", b"=", b"==", b"=\n", b"=4", b"=41",
    b"data:application/zip;base64,", b"data:,", b"%", b"%4", b"%41", b"> ", b"\r", b"\n", b"\r\n",
    b"UEsDBBQAAAAIA", b"A" * 40, b"0123456789abcdef" * 3, bytes(range(256)), "日本語".encode(), b" ",
]


def test_hostile_fragments_raise_nothing_but_inspection_limit() -> None:
    chooser = random.Random(20240607)
    for _ in range(400):
        text = b"".join(chooser.choice(FRAGMENTS) for _ in range(chooser.randrange(60)))
        try:
            found = scan(text, max_output=chooser.choice([0, 50, 5000, LIMIT]), min_size=chooser.randrange(30))
        except InspectionLimit:
            continue
        assert all(isinstance(one.data, bytes) and isinstance(one.name, str) for one in found)
