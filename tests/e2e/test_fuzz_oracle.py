"""The fuzzer's oracle must be able to fail: it flags every way an encrypted archive can ride along
in a delivered copy, and stays quiet for plain files and for a converted mail with only a link."""

from __future__ import annotations

import base64
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.fuzz import oracle
from tests.fuzz.addresses import is_internal

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "files"
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "containers"
AES_ZIP = (CORPUS / "01_aes256_7zip_ja.zip").read_bytes()
ZIPCRYPTO_ZIP = (CORPUS / "02_zipcrypto_infozip_ascii.zip").read_bytes()
PLAIN_ZIP = (CORPUS / "04_unencrypted_7zip.zip").read_bytes()
PLAIN_PDF = (CORPUS / "12a_plain.pdf").read_bytes()
ENCRYPTED_7Z = (FIXTURES / "encrypted.7z").read_bytes()


@pytest.fixture(autouse=True, scope="module")
def archive_tools():
    missing = [tool for tool in ("7zz", "bsdtar") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: `make system-deps` installs them "
                    "(Debian packages 7zip and libarchive-tools)")


def b64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))


def mail(*parts: bytes) -> bytes:
    head = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
            b"Subject: test\r\nMessage-ID: <oracle@city.example.lg.jp>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n")
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts)
    return head + body + b"--B--\r\n"


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease find the file attached.\r\n"


def attachment(data: bytes, ctype: bytes = b"application/zip", name: bytes = b"a.zip") -> bytes:
    return (b"Content-Type: " + ctype + b"; name=\"" + name + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"" + name + b"\"\r\n\r\n" + b64(data))


def findings(data: bytes) -> list[str]:
    report = oracle.examine(data)
    assert not report.errors, report.errors
    return report.findings


def test_aes_zip_is_flagged_by_all_three_readers():
    found = findings(mail(TEXT, attachment(AES_ZIP)))
    assert found
    for tool in ("zipfile", "7zz", "bsdtar"):
        assert any(f"{tool}:" in finding for finding in found), (tool, found)
    assert any(finding.startswith("part 2 (application/zip) → base64 → zipfile: encrypted member")
               for finding in found)


def test_zipcrypto_zip_is_flagged():
    assert findings(mail(TEXT, attachment(ZIPCRYPTO_ZIP)))


def test_zip_with_junk_before_and_after_is_flagged():
    junk = bytes((i * 37 + 11) % 256 for i in range(100))
    assert findings(mail(TEXT, attachment(junk + AES_ZIP + junk, b"application/octet-stream",
                                          b"setup.exe")))


def test_base64_zip_in_a_text_plain_part_is_flagged():
    body = (b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            b"Here is the archive as text:\r\n\r\n" + b64(ZIPCRYPTO_ZIP) + b"\r\n\r\nRegards\r\n")
    found = findings(mail(body))
    assert any("base64 text at line" in finding for finding in found), found


def test_encrypted_zip_inside_a_plain_zip_is_flagged():
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "plain")
        archive.writestr("inner.zip", AES_ZIP)
    found = findings(mail(TEXT, attachment(outer.getvalue(), name=b"outer.zip")))
    assert any("zipfile member 'inner.zip' → zipfile: encrypted member" in f for f in found), found


def test_encrypted_zip_inside_a_base64_message_rfc822_part_is_flagged():
    inner = mail(TEXT, attachment(AES_ZIP)).replace(b"boundary=\"B\"", b"boundary=\"INNER\"") \
        .replace(b"--B", b"--INNER")
    forwarded = (b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                 + b64(inner))
    assert findings(mail(TEXT, forwarded))


def test_encrypted_7z_is_flagged():
    found = findings(mail(TEXT, attachment(ENCRYPTED_7Z, b"application/x-7z-compressed", b"a.7z")))
    assert any("7zz:" in finding for finding in found), found


def test_plain_zip_is_not_flagged_but_was_opened_and_looked_into():
    report = oracle.examine(mail(TEXT, attachment(PLAIN_ZIP)))
    assert report.findings == [] and report.errors == []
    assert {"zipfile", "7zz", "bsdtar"} <= set(report.opened_by)


def test_plain_pdf_is_not_flagged():
    assert findings(mail(TEXT, attachment(PLAIN_PDF, b"application/pdf", b"a.pdf"))) == []


def test_converted_mail_with_only_a_link_is_not_flagged():
    notice = ("このメールの添付ファイルはダウンロードリンクに置き換えられました。\r\n"
              "https://files.city.example.lg.jp/d/Abc123Def456Ghi789Jkl012Mno345\r\n"
              "見積書一式_2026年11月.zip (6878 bytes, SHA-256 2f6fdfb4748ea1f1a56c7fc9560bdef6"
              "1e3638c930d655ef4798c3b03fe078cb)\r\n").encode("utf-8")
    body = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b64(notice))
    html = (b"Content-Type: text/html; charset=utf-8\r\n\r\n<p><a href=\"https://files.city.example"
            b".lg.jp/d/Abc123Def456Ghi789Jkl012Mno345\">download</a></p>\r\n")
    assert findings(mail(body, html)) == []


@pytest.mark.parametrize("address, internal", [
    ("somu@city.example.lg.jp", True),
    ("somu.ka@CITY.Example.LG.JP", True),
    ("tanaka@partner.example.com", False),
    ("tanaka%partner.example.com@city.example.lg.jp", False),
    ("partner.example.com!tanaka@city.example.lg.jp", False),
    ('"tanaka@partner.example.com"@city.example.lg.jp', False),
    ("@city.example.lg.jp:tanaka@partner.example.com", False),
    ("tanaka@sub.city.example.lg.jp", False),
    ("tanaka@city.example.lg.jp.", False),
    ("tan\taka@city.example.lg.jp", False),
    ("somu@city.example.lg.jp\n", False),
    ("", False),
])
def test_only_plain_addresses_at_the_internal_domain_are_internal(address, internal):
    assert is_internal(address) is internal


def test_the_oracle_never_raises_on_garbage():
    for data in (b"", b"\x00" * 1000, b"PK\x03\x04" + bytes(range(256)) * 2 + b"PK\x05\x06" + b"\xff" * 30,
                 b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n" * 50):
        oracle.examine(data)


