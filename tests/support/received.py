"""Read a received mail as its recipient does: the decoded text of each part, the links in it,
the password a notice carries. For assertions about what a reader sees, never about raw bytes
that may be base64 or quoted-printable."""

from __future__ import annotations

import base64
import re
from email import message_from_bytes, policy

LINK = re.compile(r"https?://[^\s\"<>]+/d/([A-Za-z0-9_-]{22,})")


def texts_of(data: bytes) -> list[str]:
    message = message_from_bytes(data, policy=policy.default)
    found = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            found.append(part.get_content())
    return found


def links_in(data: bytes) -> set[str]:
    return {token for text in texts_of(data) for token in LINK.findall(text)}


def body_text(data: bytes) -> str:
    return "\n".join(texts_of(data))


def password_in(text: str) -> str:
    match = re.search(r"(?:■パスワード|Password:?)\s*\n?\s*(\S{8,})", text)
    assert match, text
    return match.group(1)


def assert_no_zip_bytes(data: bytes, zip_bytes: bytes) -> None:
    message = message_from_bytes(data, policy=policy.default)
    for part in message.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True) or b""
            assert b"PK\x03\x04" not in payload
    assert base64.b64encode(zip_bytes[:60])[:40] not in data.replace(b"\r\n", b"")
