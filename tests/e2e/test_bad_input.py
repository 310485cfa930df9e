"""Hostile and broken input: each case has a defined outcome, never a traceback, hang or lost mail."""

from __future__ import annotations

import re
import socket
import struct
from email import message_from_bytes, policy

import pytest

from tests.support.handmade import AES_ZIP, TEXT, ZIP_HEADERS, b64, mixed
from tests.support.received import links_in, texts_of
from tests.support.running import send

SENDER, EXTERNAL = "somu@city.example.lg.jp", "tanaka@partner.example.com"


def assert_converted(sink, data_sent: bytes) -> bytes:
    (message,) = sink.wait_for(1)
    assert message.data != data_sent
    assert len(links_in(message.data)) == 1
    assert b"PK\x03\x04" not in b"".join(
        (p.get_payload(decode=True) or b"") for p in message_from_bytes(message.data).walk()
        if not p.is_multipart()
    )
    return message.data


def test_unclosed_multipart_with_encrypted_zip_is_converted(sink, start_gateway):
    running = start_gateway()
    data = mixed(TEXT, ZIP_HEADERS, b64(AES_ZIP), closing=False)
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    assert_converted(sink, data)


def test_unknown_charset_body_gets_the_notice_as_utf8(sink, start_gateway):
    running = start_gateway()
    body = b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nHello\r\n"
    data = mixed(body, ZIP_HEADERS, b64(AES_ZIP))
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    out = assert_converted(sink, data)
    text_parts = [p for p in message_from_bytes(out, policy=policy.default).walk()
                  if p.get_content_type() == "text/plain"]
    assert text_parts and all(p.get_content_charset() == "utf-8" for p in text_parts)


def test_broken_base64_zip_is_kept_from_travelling(sink, start_gateway):
    running = start_gateway()
    broken = b64(AES_ZIP)[:-200] + b"!!!not*base64***\r\n"
    data = mixed(TEXT, ZIP_HEADERS, broken)
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    assert_converted(sink, data)


def test_truncated_encrypted_zip_is_converted(sink, start_gateway):
    running = start_gateway()
    data = mixed(TEXT, ZIP_HEADERS, b64(AES_ZIP[: len(AES_ZIP) // 2]))
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    assert_converted(sink, data)


def test_zip_claiming_huge_sizes_is_converted_without_inflating(sink, start_gateway):
    running = start_gateway()
    name = b"huge.bin"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, 8, 0, 0, 0, 0xFFFFFFF0, 0xFFFFFFF0,
                        len(name), 0) + name + b"\x00" * 32
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 1, 8, 0, 0, 0, 0xFFFFFFF0,
                          0xFFFFFFF0, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    data = mixed(TEXT, ZIP_HEADERS, b64(local + central + end))
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    assert_converted(sink, data)


def test_hostile_filename_never_reaches_a_header_or_the_notice_raw(sink, start_gateway):
    running = start_gateway()
    headers = (b"Content-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: base64\r\n"
               b"Content-Disposition: attachment; filename*=utf-8''..%2F..%2Fetc%2Fpasswd%0D%0ABcc%3A%20evil%40x.example%E2%80%AE.zip\r\n")
    data = mixed(TEXT, headers, b64(AES_ZIP))
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    out = assert_converted(sink, data)
    # What a reader sees: every header as decoded, and the notice as decoded from its base64.
    # (The raw bytes cannot show this: the notice is base64, so checks on them always held.)
    message = message_from_bytes(out, policy=policy.default)
    for part in message.walk():
        for name, value in part.items():
            assert name.lower() != "bcc" and "evil@" not in str(value), (name, value)
            assert "etc/passwd" not in str(value) and "\u202e" not in str(value), (name, value)
    notice = "\n".join(texts_of(out))
    assert "evil@x.example.zip" in notice  # the name is shown: the checks below look at it
    assert not re.search(r"(?m)^\s*Bcc:", notice), notice
    assert "etc/passwd" not in notice and "../" not in notice and "\u202e" not in notice


def test_undecodable_headers_pass_unchanged(sink, start_gateway):
    running = start_gateway()
    data = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
            b"Subject: =?x-unknown?B?????=?= \xff\xfe raw\r\n\r\nbody\r\n")
    assert send(running.port, SENDER, [EXTERNAL], data)[0] == 250
    assert sink.wait_for(1)[0].data == data


def test_nul_bytes_are_refused_with_a_reason(sink, start_gateway):
    running = start_gateway()
    data = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
            b"Subject: nul\r\n\r\nbody with a NUL \x00 byte\r\n")
    code, text = send(running.port, SENDER, [EXTERNAL], data)
    assert code == 554 and text.startswith("5.6.0") and "NUL" in text
    assert sink.messages == []


def test_long_lines_pass_and_overlong_lines_are_refused_with_a_reason(sink, start_gateway):
    running = start_gateway()
    long_line = b"From: <somu@city.example.lg.jp>\r\n\r\n" + b"x" * 5000 + b"\r\n"
    assert send(running.port, SENDER, [EXTERNAL], long_line)[0] == 250
    assert sink.wait_for(1)[0].data == long_line
    overlong = b"From: <somu@city.example.lg.jp>\r\n\r\n" + b"y" * 70000 + b"\r\n"
    code, text = send(running.port, SENDER, [EXTERNAL], overlong)
    assert code == 500 and "5.5.2" in text and "Line too long" in text
    assert len(sink.messages) == 1


def test_bare_lf_lines_are_measured_one_by_one(sink, start_gateway):
    """A bare LF ends a line for the length limit too (only CRLF.CRLF ends the data)."""
    running = start_gateway()
    head = b"From: <somu@city.example.lg.jp>\nTo: <tanaka@partner.example.com>\nSubject: lf\n\n"
    body = b"".join(b"%075d\n" % n for n in range(200 * 1024 // 76))
    assert len(body) > 3 * 64 * 1024 and max(map(len, body.split(b"\n"))) == 75
    replies = raw_session(running.port, head + body)
    assert replies[-1].startswith(b"250"), replies
    # raw_session ends the data with CRLF.CRLF, which adds a CRLF of its own
    assert sink.wait_for(1)[0].data == (head + body).replace(b"\n", b"\r\n") + b"\r\n"
    replies = raw_session(running.port, head + b"y" * 70000 + b"\n" + body[:760])
    assert replies[-1].startswith(b"500 5.5.2 Line too long"), replies
    assert len(sink.messages) == 1


def raw_session(port: int, payload: bytes) -> list[bytes]:
    """Speak SMTP by hand, so line endings are exactly what we send."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        reader = conn.makefile("rb")
        replies = [reader.readline()]
        for command in (b"EHLO raw.test", b"MAIL FROM:<somu@city.example.lg.jp>",
                        b"RCPT TO:<tanaka@partner.example.com>", b"DATA"):
            conn.sendall(command + b"\r\n")
            line = reader.readline()
            while line[3:4] == b"-":
                line = reader.readline()
            replies.append(line)
        conn.sendall(payload + b"\r\n.\r\n")
        replies.append(reader.readline())
        conn.sendall(b"QUIT\r\n")
        return replies


def test_bare_lf_message_with_encrypted_zip_is_converted_to_crlf(sink, start_gateway):
    running = start_gateway()
    data = mixed(TEXT, ZIP_HEADERS, b64(AES_ZIP)).replace(b"\r\n", b"\n")
    replies = raw_session(running.port, data)
    assert replies[-1].startswith(b"250"), replies
    (message,) = sink.wait_for(1)
    assert len(links_in(message.data)) == 1
    assert b"\n" not in message.data.replace(b"\r\n", b"")


@pytest.mark.parametrize("body", [b"", b"\r\n", b"Subject: only headers\r\n"])
def test_degenerate_messages_are_relayed(body, sink, start_gateway):
    running = start_gateway()
    replies = raw_session(running.port, body)
    assert replies[-1].startswith(b"250"), replies
    assert len(sink.wait_for(1)) == 1
