"""Hand-built multipart mails for hostile-input tests: one text part and one attachment with
the headers a test chooses, around the corpus's AES ZIP; CRLF, boundary BOUND."""

from __future__ import annotations

import base64

from tests.support.corpus import CORPUS

AES_ZIP = (CORPUS / "files" / "01_aes256_7zip_ja.zip").read_bytes()


def b64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))


def mixed(body_part: bytes, attachment_headers: bytes, payload: bytes, subject: bytes = b"test",
          closing: bool = True) -> bytes:
    parts = [
        b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n",
        b"Subject: " + subject + b"\r\nMessage-ID: <bad-input@city.example.lg.jp>\r\n",
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n",
        b"--BOUND\r\n", body_part, b"\r\n--BOUND\r\n", attachment_headers, b"\r\n", payload, b"\r\n",
    ]
    if closing:
        parts.append(b"--BOUND--\r\n")
    return b"".join(parts)


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"

ZIP_HEADERS = (b"Content-Type: application/zip; name=\"a.zip\"\r\n"
               b"Content-Transfer-Encoding: base64\r\n"
               b"Content-Disposition: attachment; filename=\"a.zip\"\r\n")

