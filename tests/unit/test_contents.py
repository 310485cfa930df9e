"""The content inspector: an encrypted archive is found wherever it hides, what cannot be
opened is never called clean, and every budget ends in its own error."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bz2
import gzip
import io
import lzma
import random
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from gateway.containers.base import InspectionLimit, InspectionTimedOut
from gateway.containers.contents import ContentInspector, InspectionLimits, _empty_line_start
from gateway.model import Finding
from gateway.pipeline.classify import content_inspector
from gateway.pipeline.parse import MimeLimits

UNIT = Path(__file__).resolve().parent
CORPUS = UNIT.parent / "corpus"
AES_ZIP = (CORPUS / "files" / "01_aes256_7zip_ja.zip").read_bytes()
ZIPCRYPTO = (CORPUS / "files" / "02_zipcrypto_infozip_ascii.zip").read_bytes()
PLAIN_ZIP = (CORPUS / "files" / "04_unencrypted_7zip.zip").read_bytes()
PDF = (CORPUS / "files" / "12a_plain.pdf").read_bytes()
ARCHIVES = UNIT / "fixtures" / "archives"
SHELLS = UNIT / "fixtures" / "shells"


def finding(data: bytes, **limits) -> Finding:
    return content_inspector(MimeLimits(), InspectionLimits(**limits)).inspect(data).finding


def zipped(name: str, data: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


# --- found by content, at any offset ---------------------------------------------------------

@pytest.mark.parametrize("data", [AES_ZIP, ZIPCRYPTO, b"MZ" + bytes(500) + AES_ZIP + b"tail" * 100,
                                  AES_ZIP[:200]], ids=["aes", "zipcrypto", "stub-and-tail", "cut"])
def test_encrypted_zip_records_are_found_anywhere(data):
    assert finding(data) is Finding.ENCRYPTED


@pytest.mark.parametrize("data", [PLAIN_ZIP, PDF, b"", b"hello world" * 1000], ids=str)
def test_plain_files_are_clean(data):
    assert finding(data) is Finding.CLEAN


def test_an_unknown_method_with_the_flag_counts_only_inside_a_whole_zip():
    stray = b"\x89PNG" + bytes(100) + struct.pack("<4s5H", b"PK\x03\x04", 20, 1, 0xFFFF, 0, 0) + bytes(400)
    assert finding(stray) is Finding.CLEAN  # two bytes that read "PK" in an image
    tampered = AES_ZIP.replace(struct.pack("<H", 99), struct.pack("<H", 0xFFFF))
    assert finding(tampered) is Finding.ENCRYPTED


# --- containers opened ----------------------------------------------------------------------

@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                    zipfile.ZIP_LZMA], ids=["stored", "deflated", "bzip2", "lzma"])
def test_an_encrypted_zip_inside_a_plain_zip_is_found(method):
    assert finding(zipped("inner.zip", AES_ZIP, method)) is Finding.ENCRYPTED


def test_a_plain_zip_inside_a_plain_zip_is_clean():
    assert finding(zipped("inner.zip", PLAIN_ZIP)) is Finding.CLEAN


def tarred(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("wrap", [
    gzip.compress, bz2.compress, lzma.compress,
    lambda data: gzip.compress(tarred("a.zip", data)),
    lambda data: b"junk before" + gzip.compress(data),
], ids=["gzip", "bzip2", "xz", "tar.gz", "gzip-after-junk"])
def test_compressed_streams_are_opened(wrap):
    assert finding(wrap(AES_ZIP)) is Finding.ENCRYPTED


def test_an_encrypted_zip_in_a_7z_is_found_and_an_unsupported_coder_is_not_clean():
    assert finding((ARCHIVES / "nested_encrypted_zip.7z").read_bytes()) is Finding.ENCRYPTED
    assert finding((ARCHIVES / "solid.7z").read_bytes()) is Finding.CLEAN
    assert finding((ARCHIVES / "ppmd.7z").read_bytes()) is Finding.UNINSPECTABLE


@pytest.mark.parametrize(("name", "expected"), [
    ("rar3-comment-psw.rar", Finding.ENCRYPTED), ("rar5-hpsw.rar", Finding.ENCRYPTED),
    ("rar3-solid.rar", Finding.UNINSPECTABLE), ("rar3-subdirs.rar", Finding.CLEAN),
])
def test_rar_archives_by_their_headers(name, expected):
    assert finding((ARCHIVES / name).read_bytes()) is expected


def test_a_file_embedded_in_a_pdf_stream_is_found():
    stream = zlib.compress(AES_ZIP)
    pdf = (b"%PDF-1.7\n1 0 obj\n<< /Type /EmbeddedFile /Filter /FlateDecode /Length "
           + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream\nendobj\n%%EOF\n")
    assert finding(pdf) is Finding.ENCRYPTED


def test_a_message_inside_a_file_is_walked():
    message = (b"From: a@b.example\r\nSubject: fw\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain"
               b"\r\n\r\nhi\r\n--X\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
               + binascii.b2a_qp(AES_ZIP) + b"\r\n--X--\r\n")
    assert finding(message) is Finding.ENCRYPTED


# --- files carried as text ------------------------------------------------------------------

def test_base64_text_and_uuencode_are_decoded():
    assert finding(b"see below\r\n" + base64.encodebytes(AES_ZIP)) is Finding.ENCRYPTED
    uu = b"".join(binascii.b2a_uu(AES_ZIP[i:i + 45]) for i in range(0, len(AES_ZIP), 45))
    assert finding(b"begin 644 a.zip\n" + uu + b"`\nend\n") is Finding.ENCRYPTED


def test_base64_broken_up_by_other_characters_is_read_as_lenient_decoders_read_it():
    encoded = base64.b64encode(AES_ZIP)
    # a space every seven letters and a word in front: no run of lines, yet `base64 -di` reads it
    broken = b"Attached: " + b" ".join(encoded[i:i + 7] for i in range(0, len(encoded), 7))
    assert finding(broken) is Finding.ENCRYPTED


def test_base64_folded_into_a_header_is_found():
    """The fuzzer's reproducer: CR CR LF ended a part header, so the base64 below it became a
    folded header field once the line ends were read as one."""
    raw = (Path(__file__).resolve().parent / "fixtures" / "fuzz"
           / "crcrlf-header-end-tab-indented-base64.eml").read_bytes()
    from gateway.pipeline.classify import parse_and_classify
    from gateway.wire import crlf_line_endings

    inspector = content_inspector(MimeLimits(), InspectionLimits())
    _, classification = parse_and_classify(crlf_line_endings(raw), MimeLimits(), inspector)
    assert classification.uninspectable
    assert "header" in classification.uninspectable[0]


# --- shells attached as files ---------------------------------------------------------------

def test_an_openpgp_file_is_opaque_or_encrypted_by_its_session_keys():
    assert finding((SHELLS / "encrypted_pubkey.asc").read_bytes()) is Finding.OPAQUE
    assert finding((SHELLS / "encrypted_symmetric.gpg").read_bytes()) is Finding.ENCRYPTED
    assert finding((SHELLS / "password_enveloped.der").read_bytes()) is Finding.ENCRYPTED


# --- budgets --------------------------------------------------------------------------------

def test_expansion_past_the_budget_is_a_limit_naming_it():
    bomb = zipped("zeros.bin", bytes(64 * 1024 * 1024))
    with pytest.raises(InspectionLimit, match="expand beyond 16 MiB"):
        finding(bomb, max_expanded=16 * 1024 * 1024)


def test_nesting_past_the_budget_is_a_limit_naming_it():
    data = PLAIN_ZIP
    for level in range(12):
        data = zipped(f"level{level}.zip", data)
    with pytest.raises(InspectionLimit, match="nested more than 10 deep"):
        finding(data)


def test_too_many_signatures_are_a_limit():
    with pytest.raises(InspectionLimit, match="more than 1000 archive signatures"):
        finding(b"PK\x01\x02" * 2000, max_records=1000)


def test_the_deadline_is_a_timeout_not_a_verdict():
    ticks = iter(range(0, 10_000, 5))
    inspector = ContentInspector(InspectionLimits(timeout=3), lambda data, remaining: (),
                                 clock=lambda: next(ticks))
    with pytest.raises(InspectionTimedOut):
        inspector.inspect(zipped("a.zip", PLAIN_ZIP))


def test_a_converted_copy_that_still_holds_an_archive_is_not_sent():
    """The last look before delivery: a rewrite that failed to take a file out raises."""
    from gateway.errors import RewriteError
    from gateway.model import Envelope, OutgoingMessage
    from gateway.pipeline.conversion import Verify
    from gateway.pipeline.transaction import Transaction

    mail = (b"From: a@city.example.lg.jp\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
            b"boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\n"
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(AES_ZIP).replace(b"\n", b"\r\n") + b"--B--\r\n")
    tx = Transaction(Envelope("a@city.example.lg.jp", ("t@partner.example.com",)), mail)
    tx.inspector = content_inspector(MimeLimits(), InspectionLimits())
    tx.copy = OutgoingMessage("a@city.example.lg.jp", ("b@city.example.lg.jp",), mail)
    asyncio.run(Verify().process(tx))  # the original, for recipients inside: not looked at again
    tx.copy = OutgoingMessage("a@city.example.lg.jp", ("t@partner.example.com",), mail, "link-1")
    with pytest.raises(RewriteError, match="still holds encrypted ZIP entry"):
        asyncio.run(Verify().process(tx))  # no copy went before it: the message is refused


# --- a shell spread among prose: only the base64-among-text reading finds it -----------------

def _spread_among_prose(data: bytes) -> bytes:
    """base64 of data in groups of three letters between Japanese words (no ASCII letter):
    no line is a base64 run, and the letters taken together are the shell's alone."""
    letters = base64.b64encode(data)
    groups = [letters[at:at + 3] for at in range(0, len(letters), 3)]
    return ("ご確認ください。".encode() + b" ".join(groups) + "、以上です。\r\n".encode())


@pytest.mark.parametrize(("name", "expected"), [
    ("encrypted_symmetric.gpg", Finding.ENCRYPTED),
    ("password_enveloped.der", Finding.ENCRYPTED),
    ("encrypted_pubkey_and_password.gpg", Finding.OPAQUE),
])
def test_an_encrypted_shell_spread_among_prose_is_found(name, expected):
    assert finding(_spread_among_prose((SHELLS / name).read_bytes())) is expected


def test_prose_whose_letters_decode_like_a_packet_is_clean():
    """"Than…" decodes to 0x85, an OpenPGP packet tag: noise, not a packet that fills it."""
    prose = b"Thank you for your mail; the figures follow in the next one.\r\n" * 30
    assert finding(prose) is Finding.CLEAN


def test_the_empty_line_is_found_where_the_regex_finds_it():
    chance = random.Random(11)
    for _ in range(20_000):
        head = bytes(chance.choice(b"a\r\n\n") for _ in range(chance.randint(0, 12)))
        match = re.search(rb"\r?\n\r?\n", head)
        assert _empty_line_start(head) == (match.start() if match else -1), head
