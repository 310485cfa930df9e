"""The starting mails and what mail is built from: the real-client corpus with its envelopes, a few
mails built with the stdlib `email` package around the corpus files (AES, ZipCrypto and plain
ZIPs, a PDF, an encrypted 7z), and the building blocks the mutators share (MIME parts parsed and
flattened byte-exactly with compat32, base64 and uuencode text, ZIP and TNEF containers).

Everything is deterministic (fixed boundaries, dates and Message-IDs, no clock), so that message i
of a run can be rebuilt from (seed, i).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from functools import lru_cache
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
CORPUS = TESTS / "corpus"
FILES = CORPUS / "files"
SENDER = "somu@city.example.lg.jp"
EXTERNAL = ("tanaka@partner.example.com", "eigyo@partner.example.com", "kato@example.co.jp")
INTERNAL = ("zaisei@city.example.lg.jp", "jinji@city.example.lg.jp")


_CRLF = policy.compat32.clone(linesep="\r\n")


# -- building blocks (shared with mutators.py) -----------------------------------------------------

def load(data: bytes) -> Message:
    return message_from_bytes(data, policy=policy.compat32)


class Slots:
    """Placeholders that survive the generator, replaced by exact bytes after flattening."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}

    def __call__(self, value: bytes) -> str:
        token = f"FUZZSLOT{len(self.values):04d}Z"
        self.values[token.encode()] = value
        return token


def dump(message: Message, slots: Slots | None = None) -> bytes:
    """Flatten with CRLF and no refolding (compat32 gives back parsed mail byte for byte)."""
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_CRLF).flatten(message)
    data = out.getvalue()
    for token, value in (slots.values.items() if slots else ()):
        data = data.replace(token, value)
    return data


def b64(data: bytes, width: int = 76) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i:i + width] for i in range(0, len(text), width)) + "\r\n"


def raw_part(headers: list[tuple[str, str]], body: bytes | str) -> Message:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    return load(head.encode("utf-8", "surrogateescape") + b"\r\n" + body)


def set_header(part: Message, name: str, value: str | None) -> None:
    del part[name]
    if value is not None:
        part[name] = value


def set_body(part: Message, body: str, cte: str | None) -> None:
    part.set_payload(body)
    set_header(part, "Content-Transfer-Encoding", cte)


def attachment(data: bytes, ctype: str, name: str) -> Message:
    return raw_part([("Content-Type", f'{ctype}; name="{name}"'), ("Content-Transfer-Encoding", "base64"),
                     ("Content-Disposition", f'attachment; filename="{name}"')], b64(data))


def split_message(data: bytes) -> tuple[bytes, bytes]:
    match = re.search(rb"\r?\n\r?\n", data)
    return (data[:match.start()], data[match.end():]) if match else (data, b"")


def header_lines(head: bytes) -> list[bytes]:
    return [line for line in re.split(rb"\r?\n(?![ \t])", head) if line]


def outer(head: bytes, content_type: str, parts: list[bytes], boundary: str) -> bytes:
    """A new top level: the original's non-Content headers, then our multipart body."""
    keep = [line for line in header_lines(head) if not line.lower().startswith((b"content-", b"mime-"))]
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return (b"\r\n".join(keep) + f"\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}; "
            f'boundary="{boundary}"\r\n\r\n'.encode() + body + b"--" + boundary.encode() + b"--\r\n")


def content_entity(data: bytes) -> bytes:
    head, body = split_message(data)
    lines = [line for line in header_lines(head) if line.lower().startswith(b"content-")]
    return b"\r\n".join(lines or [b"Content-Type: text/plain"]) + b"\r\n\r\n" + body


def zip_of(members: list[tuple[str, bytes]], method: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name, (2026, 11, 26, 9, 0, 0)), content, method)
    return out.getvalue()


def tnef(name: bytes, content: bytes, key: int = 0x1234) -> bytes:
    def attribute(level: int, attribute_id: int, body: bytes) -> bytes:
        return struct.pack("<BII", level, attribute_id, len(body)) + body + struct.pack("<H", sum(body) & 0xFFFF)
    render = struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0)
    return (struct.pack("<IH", 0x223E9F78, key) + attribute(1, 0x00089006, struct.pack("<I", 0x10000))
            + attribute(1, 0x00069007, struct.pack("<II", 932, 0)) + attribute(2, 0x00069002, render)
            + attribute(2, 0x00018010, name + b"\x00") + attribute(2, 0x0006800F, content))


def uuencode(data: bytes, name: str) -> str:
    lines = [binascii.b2a_uu(data[i:i + 45]).decode().rstrip("\n") for i in range(0, len(data), 45)]
    return f"begin 644 {name}\r\n" + "\r\n".join(lines) + "\r\n`\r\nend\r\n"


# -- seeds -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    mail_from: str
    rcpt_to: tuple[str, ...]
    notes: dict = field(default_factory=dict, compare=False)

    def envelope(self) -> dict:
        return {"mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to)}


def file_bytes(name: str) -> bytes:
    return (FILES / name).read_bytes()


def _mixed(subject, body: MIMEText, payload: bytes, ctype: tuple[str, str], filename,
           to: tuple[str, ...], number: int) -> bytes:
    message = MIMEMultipart("mixed")
    message.set_boundary(f"=_fuzz_seed_{number}_mixed")
    message["From"] = f"<{SENDER}>"
    message["To"] = ", ".join(f"<{address}>" for address in to)
    message["Subject"] = subject
    message["Date"] = "Thu, 26 Nov 2026 09:12:40 +0900"
    message["Message-ID"] = f"<fuzz-seed-{number}@city.example.lg.jp>"
    message.attach(body)
    part = MIMEApplication(payload, ctype[1])
    part.replace_header("Content-Type", f"{ctype[0]}/{ctype[1]}")
    part.set_param("name", filename)
    part.add_header("Content-Disposition", "attachment", filename=filename)
    message.attach(part)
    return dump(message)


def _text(text: str) -> MIMEText:
    return MIMEText(text, "plain", "us-ascii")


def built_seeds() -> list[Seed]:
    aes, crypto = file_bytes("01_aes256_7zip_ja.zip"), file_bytes("02_zipcrypto_infozip_ascii.zip")
    plain, pdf = file_bytes("04_unencrypted_7zip.zip"), file_bytes("12a_plain.pdf")
    seven = (TESTS / "unit" / "fixtures" / "containers" / "encrypted.7z").read_bytes()
    zip_type = ("application", "zip")
    one = (EXTERNAL[0],)
    japanese = MIMEText("田中様\n\nお世話になっております。見積書をお送りします。\n"
                        "パスワードは別途お送りします。\n\n総務課 山田\n", "plain", "iso-2022-jp")
    japanese_name = Header("見積書_2026年11月.zip", "iso-2022-jp").encode()
    subject_ja = Header("【送付】見積書の件", "iso-2022-jp").encode()
    mixed_to = (EXTERNAL[0], INTERNAL[0], EXTERNAL[2])
    built = [
        ("built_aes_minimal", _mixed("quote", _text("Please find the quote attached.\n"), aes,
                                     zip_type, "quote.zip", one, 1), one),
        ("built_zipcrypto_minimal", _mixed("spec", _text("The spec is attached.\n"), crypto,
                                           zip_type, "spec.zip", one, 2), one),
        ("built_plain_zip", _mixed("minutes", _text("Minutes attached.\n"), plain, zip_type,
                                   "minutes.zip", one, 3), one),
        ("built_plain_pdf", _mixed("report", _text("Report attached.\n"), pdf,
                                   ("application", "pdf"), "report.pdf", one, 4), one),
        ("built_iso2022jp_aes", _mixed(subject_ja, japanese, aes, ("application", "x-zip-compressed"),
                                       japanese_name, one, 5), one),
        ("built_mixed_recipients", _mixed("results", _text("Results attached.\n"), crypto, zip_type,
                                          "results.zip", (EXTERNAL[0], EXTERNAL[2]), 6), mixed_to),
        ("built_encrypted_7z", _mixed("archive", _text("7z attached.\n"), seven,
                                      ("application", "x-7z-compressed"), "archive.7z", one, 7), one),
    ]
    built += [  # one text part, the shape classify's shortcut vouches for without a parse
        ("built_one_part_text", _one_part("Thank you for the minutes.\r\n" * 30, 8), one),
        ("built_one_part_zip_pasted", _one_part("The quote, as text:\r\n\r\n" + b64(aes)
                                                + "\r\nRegards\r\n", 9), one),
    ]
    return [Seed(name, data, SENDER, rcpts) for name, data, rcpts in built]


def _one_part(text: str, number: int) -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{EXTERNAL[0]}>\r\nSubject: one part\r\n"
            f"Message-ID: <fuzz-seed-{number}@city.example.lg.jp>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode("ascii")


def corpus_seeds() -> list[Seed]:
    seeds = []
    for eml in sorted((CORPUS / "mail").glob("*.eml")):
        side = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
        envelope = side["envelope"]
        seeds.append(Seed(f"corpus_{eml.stem}", eml.read_bytes(), envelope["mail_from"],
                          tuple(envelope["rcpt_to"]), {"expected": side.get("expected_actions")}))
    return seeds


@lru_cache(maxsize=1)
def all_seeds() -> tuple[Seed, ...]:
    return tuple(corpus_seeds() + built_seeds())
