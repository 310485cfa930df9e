"""The two mails of the load bench, the same bytes on every run: a ~2 MB PPAP mail (a WinZip-AES
ZIP of incompressible bytes) and a ~2 KB plain one, written with LF line ends for smtp-source -F."""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pyzipper
from pyzipper import zipfile_aes

PPAP_PAYLOAD_BYTES = 1_500_000  # random bytes in the ZIP: ~2.05 MB of mail once base64-encoded
SEED = 14  # issue 14
DATE = "Mon, 07 Dec 2026 09:00:00 +0900"


class _SeededRandom:
    """Stands in for Cryptodome's Random in pyzipper, so the AES salt (its only randomness) repeats."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def new(self) -> _SeededRandom:
        return self

    def read(self, size: int) -> bytes:
        return self._random.randbytes(size)


@contextlib.contextmanager
def _seeded_salt(seed: int) -> Iterator[None]:
    original = zipfile_aes.Random
    zipfile_aes.Random = _SeededRandom(seed)
    try:
        yield
    finally:
        zipfile_aes.Random = original


def aes_zip(payload_bytes: int, seed: int = SEED) -> bytes:
    """An AES-256 ZIP of one 'PDF' of seeded random bytes (they do not compress), same bytes each call."""
    buffer = io.BytesIO()
    with _seeded_salt(seed), pyzipper.AESZipFile(buffer, "w", encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(b"bench-password-14")
        member = archive.zipinfo_cls("見積書.pdf", date_time=(2026, 12, 7, 9, 0, 0))  # no clock
        member.compress_type = pyzipper.ZIP_DEFLATED
        archive.writestr(member, random.Random(seed).randbytes(payload_bytes))
    return buffer.getvalue()


def _message(sender: str, subject: str, body: str, message_id: str) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = "partner@partner.example.com"
    message["Subject"] = subject
    message["Date"] = DATE  # Postfix adds Date and Message-ID when missing: give all paths the same
    message["Message-ID"] = f"<{message_id}@city.example.lg.jp>"
    message.set_content(body, charset="utf-8")
    return message


def ppap_mail(sender: str, payload_bytes: int = PPAP_PAYLOAD_BYTES) -> bytes:
    message = _message(sender, "【送付】お見積書の件", "いつもお世話になっております。\n\nお見積書をお送りいたします。\n"
                       "パスワードは別途お送りいたします。\n", "bench-load-ppap")
    message.add_attachment(aes_zip(payload_bytes), maintype="application", subtype="zip",
                           filename="見積書_2026年12月.zip")
    message.set_boundary("bench-load-boundary-14")  # the generator would pick a random one
    return message.as_bytes()


def plain_mail(sender: str) -> bytes:
    """~2 KB of text, no attachment: passes through the gateway untouched."""
    body = "Thank you for your mail; the figures follow in the next one.\n" * 32
    return _message(sender, "Re: meeting", body, "bench-load-plain").as_bytes()


def write_lf(path: Path, mail: bytes) -> Path:
    """smtp-source -F appends CRLF to every line it reads, so the file has LF line ends."""
    path.write_bytes(mail.replace(b"\r\n", b"\n"))
    return path
