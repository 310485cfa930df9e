"""Hostile filenames and a hostile subject through a real gateway: nothing of them reaches a header
of any mail we send, a log record, the notice, the portal pages, or the file system outside the
data directory."""

from __future__ import annotations

import base64
import logging
import re
import unicodedata
import urllib.parse
import uuid
from email import message_from_bytes, policy
from pathlib import Path

from gateway.store.passwords import hash_token
from tests.support.portal_http import portal
from tests.support.ppap import SENDER, zipcrypto_zip
from tests.support.received import links_in
from tests.support.running import PUBLIC_URL, send

PARTNER = "tanaka@partner.example.com"
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
HOSTILE_SUBJECT = "見積\r\nX-Injected: subject\u202e\x00end"
ESCAPE_TO = f"pwned-{uuid.uuid4().hex}"  # a name no other test could have written


def forbidden(text: str, allow: str = "") -> set[str]:
    return {
        ch for ch in text
        if ch not in allow and (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI)
    }


def b_word(text: str) -> str:
    return f"=?UTF-8?B?{base64.b64encode(text.encode()).decode()}?="


def rfc2231(text: str) -> str:
    return "filename*=UTF-8''" + urllib.parse.quote(text.encode(), safe="")


# Content-Disposition parameters as senders write them → the name every display must show
ATTACHMENTS: list[tuple[bytes, str]] = [
    (('filename="' + b_word("請求書\u202egpj.zip") + '"').encode(), "請求書gpj.zip"),
    (rfc2231("a\r\nX-Injected: yes\x00.zip").encode(), "aX-Injected: yes.zip"),
    ('filename="\u2066報告\u2069\x85.zip"'.encode(), "報告.zip"),  # raw 8-bit UTF-8
    ('filename="議事録①.zip"'.encode("cp932"), "議事録①.zip"),  # raw 8-bit CP932
    (rfc2231("長" * 1000 + ".zip").encode(), "長" * 196 + ".zip"),
    (rfc2231(f"../../../../../../../../tmp/{ESCAPE_TO}.zip").encode(), f"{ESCAPE_TO}.zip"),
    (rfc2231(f"../{ESCAPE_TO}-2.zip").encode(), f"{ESCAPE_TO}-2.zip"),
]


def hostile_mail(zip_bytes: bytes, subject: str) -> tuple[bytes, bytes]:
    """(the message, its Subject line exactly as sent)."""
    subject_line = f"Subject: {b_word(subject)}".encode()
    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "お世話になっております。\r\n".encode()
    ]
    encoded = base64.encodebytes(zip_bytes).replace(b"\n", b"\r\n")
    for disposition, _ in ATTACHMENTS:
        parts.append(
            b"Content-Type: application/zip\r\nContent-Disposition: attachment; " + disposition
            + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
        )
    head = [
        f"From: {SENDER}".encode(), f"To: {PARTNER}".encode(), subject_line,
        b"Message-ID: <hygiene@city.example.lg.jp>", b"Date: Thu, 26 Nov 2026 09:00:00 +0900",
        b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="hyg"',
    ]
    body = b"".join(b"--hyg\r\n" + p + b"\r\n" for p in parts) + b"--hyg--\r\n"
    return b"\r\n".join(head) + b"\r\n\r\n" + body, subject_line


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def assert_headers_clean(data: bytes) -> None:
    """No header line was forged, and no header of any part decodes to something unsafe."""
    assert not re.search(rb"(?mi)^X-Injected", data)
    message = message_from_bytes(data, policy=policy.default)
    for part in message.walk():
        for name, value in part.items():
            if name.lower() != "subject" or part is not message:
                assert not forbidden(str(value), allow="\t"), (name, value)


def assert_page_clean(page: str, shown: list[str]) -> None:
    assert not forbidden(page, allow="\n\t\r")
    assert "\r" not in page.replace("\r\n", "")
    assert not re.search(r"(?m)^X-Injected", page)
    for name in shown:
        assert name in page or name.replace("長" * 196, "長" * 195) in page


class Sent:
    """What one hostile mail produced: the relayed copy, the sender's receipt, both tokens."""

    def __init__(self, running, sink, subject: str) -> None:
        data, self.subject_line = hostile_mail(zipcrypto_zip({"a.txt": b"secret\n"}, "pw-12345678"), subject)
        code, text = send(running.port, SENDER, [PARTNER], data, ("BODY=8BITMIME",))
        assert code == 250, text
        (self.relayed,) = sink.wait_for(1)
        (self.token,) = links_in(self.relayed.data)
        running.advance(minutes=2)
        (self.receipt,) = [m for m in sink.wait_for(2)[1:] if m.rcpt_tos == [SENDER]]
        receipt_text = "".join(_texts(self.receipt.data))
        pattern = re.escape(PUBLIC_URL) + r"/m/([A-Za-z0-9_-]+)"
        self.manage_token = re.findall(pattern, receipt_text)[0]


def test_hostile_filenames_stay_out_of_headers_logs_pages_and_paths(
    sink, start_gateway, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    running = start_gateway()
    sent = Sent(running, sink, "見積書の送付")
    shown = [name for _, name in ATTACHMENTS]

    assert b"\x00" not in header_block(sent.relayed.data)
    assert_headers_clean(sent.relayed.data)
    texts = [t.replace("\r\n", "\n") for t in _texts(sent.relayed.data)]
    for rendered in texts:  # the notice, in text and HTML
        assert not forbidden(rendered, allow="\n\t")
        assert not re.search(r"(?m)^X-Injected", rendered)
    assert all(any(name in text for text in texts) for name in shown[:4])

    # what was stored, and how the portal shows it
    link = running.db.link_by_token_hash(hash_token(sent.token))
    assert [f.display_name for f in running.db.files_of(link.transfer_id)] == shown
    status, landing, headers = portal(running, f"/d/{sent.token}")
    assert status == 200
    assert not forbidden(" ".join(headers.values()))
    assert_page_clean(landing, shown[:4])
    assert_headers_clean(sent.receipt.data)
    status, page, _ = portal(running, f"/m/{sent.manage_token}")
    assert status == 200
    assert_page_clean(page, shown[:4])

    assert not [r.getMessage() for r in caplog.records if forbidden(r.getMessage())]
    assert any(record.name == "gateway.message" for record in caplog.records)

    # nothing was written anywhere but in the data directory, and no stored name is a name
    data_dir = tmp_path / "data"
    assert all(p == data_dir or data_dir in p.parents for p in tmp_path.rglob("*"))
    assert not list(Path("/tmp").glob(f"{ESCAPE_TO}*"))
    assert not [p for p in data_dir.rglob("*") if "pwned" in p.name or p.suffix == ".zip"]


def test_hostile_subject_never_reaches_a_header_we_write_or_a_log_record(
    sink, start_gateway, caplog
) -> None:
    caplog.set_level(logging.INFO)
    running = start_gateway()
    sent = Sent(running, sink, HOSTILE_SUBJECT)
    # the sender's own Subject is passed on byte for byte, still encoded: never decoded into it
    assert sent.subject_line + b"\r\n" in header_block(sent.relayed.data)
    assert_headers_clean(sent.relayed.data)
    assert_headers_clean(sent.receipt.data)  # composed by us, quoting the subject
    receipt_subject = str(message_from_bytes(sent.receipt.data, policy=policy.default)["Subject"])
    assert "見積" in receipt_subject and not forbidden(receipt_subject)
    for text in _texts(sent.receipt.data):
        assert not forbidden(text.replace("\r\n", "\n"), allow="\n\t")
    assert not [r.getMessage() for r in caplog.records if forbidden(r.getMessage())]


def test_hostile_subject_is_shown_clean_on_the_portal_pages(sink, start_gateway) -> None:
    running = start_gateway()
    sent = Sent(running, sink, HOSTILE_SUBJECT)
    for path in (f"/d/{sent.token}", f"/m/{sent.manage_token}"):
        status, page, _ = portal(running, path)
        assert status == 200
        assert_page_clean(page, [])


def _texts(data: bytes) -> list[str]:
    message = message_from_bytes(data, policy=policy.default)
    return [p.get_content() for p in message.walk() if p.get_content_maintype() == "text"]
