"""Build the PPAP habit's two mails for tests and benchmarks: a mail carrying an encrypted ZIP
(WinZip AES through pyzipper, or traditional ZipCrypto written here, since pyzipper only reads
it), and the password mail that follows."""

from __future__ import annotations

import os
import struct
import zlib
from email.message import EmailMessage
from email.policy import SMTP

SENDER = "somu@city.example.lg.jp"


def zip_mail(rcpts: list[str], data: bytes, name: str = "見積書.zip",
             subject: str = "見積書の送付", sender: str = SENDER) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, ", ".join(rcpts), subject
    message.set_content("お世話になっております。見積書をお送りします。\n", charset="utf-8")
    message.add_attachment(data, maintype="application", subtype="zip", filename=name)
    return message.as_bytes(policy=SMTP)


def password_mail(rcpts: list[str], password: str, sender: str = SENDER) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, ", ".join(rcpts), "パスワード"
    message.set_content(f"先ほどのファイルのパスワードです。\n\nパスワード：{password}\n",
                        charset="utf-8")
    return message.as_bytes(policy=SMTP)


def zipcrypto_zip(members: dict[str, bytes], password: str) -> bytes:
    """A deflated ZIP with traditional PKWARE encryption, as `zip -P` writes it (no data
    descriptor, so the check byte is the CRC's high byte)."""
    body, central = bytearray(), bytearray()
    for name, data in members.items():
        crc = zlib.crc32(data)
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = packer.compress(data) + packer.flush()
        sealed = _zipcrypto_encrypt(password.encode(), os.urandom(11) + bytes([crc >> 24]) + deflated)
        raw_name = name.encode()
        fields = (1, 8, 0, 0x21, crc, len(sealed), len(data), len(raw_name))
        central += struct.pack("<IHH4HIIIHHHHHII", 0x02014B50, 20, 20, *fields[:4], *fields[4:7],
                               fields[7], 0, 0, 0, 0, 0, len(body)) + raw_name
        body += struct.pack("<IH4HIIIHH", 0x04034B50, 20, *fields, 0) + raw_name + sealed
    count = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(body), 0)
    return bytes(body + central + end)


# The CRC-32 table ZipCrypto's key schedule steps through, taken from zlib: with all bits set as
# the start value and the result inverted, crc32 of one byte is that byte's table entry.
_TABLE = [zlib.crc32(bytes([n]), 0xFFFFFFFF) ^ 0xFFFFFFFF for n in range(256)]


def _zipcrypto_encrypt(password: bytes, plain: bytes) -> bytes:
    table = _TABLE
    k0, k1, k2 = 0x12345678, 0x23456789, 0x34567890

    def update(k0: int, k1: int, k2: int, byte: int) -> tuple[int, int, int]:
        k0 = table[(k0 ^ byte) & 0xFF] ^ (k0 >> 8)
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = table[(k2 ^ (k1 >> 24)) & 0xFF] ^ (k2 >> 8)
        return k0, k1, k2

    for byte in password:
        k0, k1, k2 = update(k0, k1, k2, byte)
    out = bytearray(len(plain))
    for index, byte in enumerate(plain):
        temp = (k2 | 2) & 0xFFFF
        out[index] = byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF)
        k0, k1, k2 = update(k0, k1, k2, byte)
    return bytes(out)
