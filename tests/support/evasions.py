"""Minimal mails for each route an encrypted archive once took past the gateway (issue "Fail
closed"): each function builds one, by hand, from the corpus's AES ZIP. CRLF unless the route
is about line ends."""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zipfile

from tests.support.corpus import CORPUS
from tests.support.smime import self_signed

AES_ZIP = (CORPUS / "files" / "01_aes256_7zip_ja.zip").read_bytes()
PLAIN_ZIP = (CORPUS / "files" / "04_unencrypted_7zip.zip").read_bytes()
SENDER = "somu@city.example.lg.jp"
EXTERNAL = "tanaka@partner.example.com"

HEAD = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
        b"Subject: fail closed\r\nMessage-ID: <fail-closed@city.example.lg.jp>\r\n"
        b"MIME-Version: 1.0\r\n")
TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease find the file attached.\r\n"


def b64(data: bytes, width: int = 76) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i:i + width] for i in range(0, len(encoded), width)) + b"\r\n"


def mixed(*parts: bytes, boundary: bytes = b"BOUND", head: bytes = HEAD) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (head + b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n"
            + body + b"--" + boundary + b"--\r\n")


def zip_part(data: bytes = AES_ZIP, content_type: bytes = b"application/zip; name=\"a.zip\"",
             disposition: bytes = b"attachment; filename=\"a.zip\"") -> bytes:
    headers = b"Content-Type: " + content_type + b"\r\nContent-Transfer-Encoding: base64\r\n"
    if disposition:
        headers += b"Content-Disposition: " + disposition + b"\r\n"
    return headers + b"\r\n" + b64(data)


def ordinary() -> bytes:
    return mixed(TEXT, zip_part())


# --- 1. framing ---------------------------------------------------------------------------

def line_ends(ending: bytes) -> bytes:
    return ordinary().replace(b"\r\n", ending)


def mixed_line_ends() -> bytes:
    lines = ordinary().split(b"\r\n")
    endings = (b"\r\n", b"\n", b"\r\r\n")
    return b"".join(line + endings[i % 3] for i, line in enumerate(lines))


# --- 2. limits ------------------------------------------------------------------------------

def _header_padding() -> bytes:
    """Header lines worth more than 64 KiB, each of ordinary length."""
    return b"".join(b"X-Pad-%d: " % i + b"p" * 900 + b"\r\n" for i in range(80))


def padded_header_then_deep(depth: int = 60) -> bytes:
    """A part header longer than 64 KiB, then a multipart nesting `depth` deep."""
    pad = _header_padding()
    inner = zip_part()
    for level in range(depth, 0, -1):
        boundary = b"L%d" % level
        inner = (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n--"
                 + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n")
    return mixed(TEXT, pad + inner)


def padded_header_then_wide(parts: int = 100_000) -> bytes:
    pad = _header_padding()
    body = b"".join(b"--W\r\n\r\nx\r\n" for _ in range(parts))
    wide = (pad + b"Content-Type: multipart/mixed; boundary=\"W\"\r\n\r\n" + body
            + b"--W\r\n" + zip_part() + b"\r\n--W--\r\n")
    return mixed(TEXT, wide)


def deep(depth: int = 60) -> bytes:
    inner = zip_part()
    for level in range(depth, 0, -1):
        boundary = b"L%d" % level
        inner = (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n--"
                 + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n")
    return mixed(TEXT, inner)


# --- 3. archives by content -----------------------------------------------------------------

def zip_between_junk() -> bytes:
    return mixed(TEXT, zip_part(b"MZ" + b"\x90" * 98 + AES_ZIP + b"\x00trailer" * 12))


def zip_typed(content_type: bytes) -> bytes:
    return mixed(TEXT, zip_part(content_type=content_type, disposition=b""))


def multipart_without_boundary() -> bytes:
    body = b"--X\r\n" + zip_part() + b"\r\n--X--\r\n"
    return HEAD + b"Content-Type: multipart/mixed\r\n\r\n" + body


# --- 4. containers --------------------------------------------------------------------------

def forwarded(content_type: bytes = b"message/rfc822", encoding: bytes = b"base64") -> bytes:
    inner = ordinary()
    encoded = b64(inner) if encoding == b"base64" else binascii.b2a_qp(inner)
    part = (b"Content-Type: " + content_type + b"\r\nContent-Transfer-Encoding: " + encoding
            + b"\r\n\r\n" + encoded)
    return mixed(TEXT, part)


def eml_as_octet_stream() -> bytes:
    return mixed(TEXT, zip_part(ordinary(), b"application/octet-stream; name=\"fw.eml\"",
                                b"attachment; filename=\"fw.eml\""))


def zip_in_plain_zip(method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as outer:
        outer.writestr("inner.zip", AES_ZIP)
        outer.writestr("readme.txt", "the password follows")
    return mixed(TEXT, zip_part(buffer.getvalue(), b"application/zip; name=\"outer.zip\"",
                                b"attachment; filename=\"outer.zip\""))


def tnef(attachment: bytes, name: bytes = b"a.zip") -> bytes:
    """A minimal winmail.dat: TNEF signature, key, version, then one attachment."""
    def attribute(level: int, ident: int, data: bytes) -> bytes:
        return (struct.pack("<BII", level, ident, len(data)) + data
                + struct.pack("<H", sum(data) & 0xFFFF))
    return (struct.pack("<IH", 0x223E9F78, 0x0102)
            + attribute(1, 0x00089006, struct.pack("<I", 0x00010000))
            + attribute(2, 0x00069002, b"\x01\x00" + b"\xff" * 4 + b"\x00" * 8)
            + attribute(2, 0x00018010, name + b"\x00")
            + attribute(2, 0x0006800F, attachment))


def winmail() -> bytes:
    return mixed(TEXT, zip_part(tnef(AES_ZIP), b"application/ms-tnef; name=\"winmail.dat\"",
                                b"attachment; filename=\"winmail.dat\""))


def base64_in_body() -> bytes:
    text = (b"Content-Type: text/plain; charset=utf-8\r\n\r\nThe file, as text:\r\n\r\n"
            + b64(AES_ZIP) + b"\r\nRegards\r\n")
    return HEAD + text


def uuencoded_in_body() -> bytes:
    lines = b"".join(binascii.b2a_uu(AES_ZIP[i:i + 45]) for i in range(0, len(AES_ZIP), 45))
    text = (b"Content-Type: text/plain; charset=utf-8\r\n\r\nSee below.\r\n\r\nbegin 644 a.zip\r\n"
            + lines.replace(b"\n", b"\r\n") + b"`\r\nend\r\n")
    return HEAD + text


# --- 5. shells ------------------------------------------------------------------------------

def fake_signed() -> bytes:
    content = (b"Content-Type: multipart/mixed; boundary=\"IN\"\r\n\r\n--IN\r\n" + TEXT
               + b"\r\n--IN\r\n" + zip_part() + b"\r\n--IN--\r\n")
    signature = (b"Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(b"not a signature" * 10))
    return (HEAD + b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; "
            b"micalg=sha-256; boundary=\"S\"\r\n\r\n--S\r\n" + content + b"\r\n--S\r\n"
            + signature + b"\r\n--S--\r\n")


def garbage_pkcs7_mime_beside() -> bytes:
    p7m = (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"x.p7m\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(b"\x30\x03junk" * 20))
    return mixed(TEXT, p7m, zip_part())


def fake_encrypted() -> bytes:
    return (HEAD + b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; "
            b"boundary=\"E\"\r\n\r\n--E\r\nContent-Type: application/pgp-encrypted\r\n\r\n"
            b"Version: 1\r\n\r\n--E\r\n" + zip_part(content_type=b"application/octet-stream")
            + b"\r\n--E--\r\n")


def smime(signed: bool, zip_headers: bytes | None = None) -> bytes:
    """A genuine S/MIME message (signed, or encrypted to a key) around a mail with the ZIP
    (its part typed as `zip_headers` say, if given)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    attachment = zip_part() if zip_headers is None else zip_headers + b"\r\n" + b64(AES_ZIP)
    content = (b"Content-Type: multipart/mixed; boundary=\"IN\"\r\n\r\n--IN\r\n" + TEXT
               + b"\r\n--IN\r\n" + attachment + b"\r\n--IN--\r\n")
    certificate, key = self_signed(SENDER)
    if signed:
        built = (pkcs7.PKCS7SignatureBuilder().set_data(content)
                 .add_signer(certificate, key, hashes.SHA256())
                 .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature]))
    else:
        built = (pkcs7.PKCS7EnvelopeBuilder().set_data(content).add_recipient(certificate)
                 .encrypt(serialization.Encoding.SMIME, []))
    built = built.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return HEAD.replace(b"MIME-Version: 1.0\r\n", b"") + built


def pgp_encrypted_with_zip_beside(armored_message: bytes) -> bytes:
    """A genuine PGP/MIME encrypted message whose control part carries the ZIP."""
    control = (b"Content-Type: application/pgp-encrypted\r\nContent-Transfer-Encoding: base64"
               b"\r\n\r\n" + b64(AES_ZIP))
    return (HEAD + b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; "
            b"boundary=\"E\"\r\n\r\n--E\r\n" + control + b"\r\n--E\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
            + armored_message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n--E--\r\n")
