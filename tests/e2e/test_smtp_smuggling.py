"""SMTP smuggling, both ways, over raw sockets.

In: every fake end-of-data (bare LF/CR variants, NUL before the dot) followed by a smuggled
MAIL/RCPT/DATA is message content; exactly one transaction reaches the next hop (aiosmtpd ≥ 1.4.5
fixed CVE-2024-27305; these tests keep it fixed). Out: the wire to the next hop carries CRLF only,
dot-stuffed, and our DKIM signature verifies on exactly those bytes.
"""

from __future__ import annotations

import time

import dkim
import pytest

from gateway.outbound.dkim_keys import generate_dkim_key
from gateway.wire import crlf_line_endings
from tests.support.raw_sink import RawClient, RawMessage, RawSink
from tests.support.running import corpus_mail

SENDER = "somu@city.example.lg.jp"
RECIPIENT = "tanaka@partner.example.com"
HEAD = (
    b"From: somu@city.example.lg.jp\r\nTo: tanaka@partner.example.com\r\n"
    b"Subject: smuggling probe\r\nMessage-ID: <probe@city.example.lg.jp>\r\n\r\n"
    b"the real message"
)
SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@partner.example.com>\r\nDATA\r\n"
    b"From: ceo@city.example.lg.jp\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)
FAKE_ENDS = {
    "bare-lf": b"\n.\n",
    "bare-cr": b"\r.\r",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "crlf-dot-cr": b"\r\n.\r",
    "lf-dot-lf-after-crlf": b"\r\n\n.\n",
}


def smuggling_body(fake_end: bytes) -> bytes:
    """The DATA content a smuggler writes, without the real CRLF.CRLF (it ends in CRLF)."""
    return HEAD + fake_end + SMUGGLED


def as_a_server_reads(body: bytes) -> bytes:
    """The content RFC 5321 makes of body: CRLF lines, one leading dot taken off each."""
    lines = body.split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def open_transaction(client: RawClient, rcpts: tuple[str, ...] = (RECIPIENT,)) -> list[int]:
    codes = [client.reply()[0], client.command(b"EHLO client.test")[0]]
    codes.append(client.command(f"MAIL FROM:<{SENDER}>".encode())[0])
    codes += [client.command(f"RCPT TO:<{rcpt}>".encode())[0] for rcpt in rcpts]
    codes.append(client.command(b"DATA")[0])
    return codes


def send_raw(port: int, body: bytes, rcpts: tuple[str, ...] = (RECIPIENT,)) -> list[int]:
    """One session: body sent exactly as given, then the real end and QUIT; every reply code."""
    with RawClient(port) as client:
        codes = open_transaction(client, rcpts)
        client.send(body + b".\r\n")
        codes.append(client.reply()[0])
        codes.append(client.command(b"QUIT")[0])
        assert client.rest() == b"", "nothing may follow the reply to QUIT"
    return codes


def assert_clean_wire(message: RawMessage) -> None:
    assert message.bare_line_ends() == [], "bare CR or LF on the wire to the next hop"
    lines = message.lines()
    assert b"." not in lines, "a lone dot inside the data would end it early"
    assert all(line.startswith(b"..") for line in lines if line.startswith(b"."))


@pytest.mark.parametrize("fake_end", FAKE_ENDS.values(), ids=FAKE_ENDS.keys())
def test_fake_end_of_data_and_smuggled_commands_stay_content_of_one_transaction(
    fake_end, sink, start_gateway
):
    running = start_gateway()
    codes = send_raw(running.port, smuggling_body(fake_end))
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    (message,) = sink.messages
    assert (message.mail_from, message.rcpt_tos) == (SENDER, [RECIPIENT])
    assert b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@partner.example.com>" in message.data
    assert message.data.endswith(b"\r\nsmuggled body\r\n")


@pytest.mark.parametrize("fake_end", FAKE_ENDS.values(), ids=FAKE_ENDS.keys())
def test_fake_ends_leave_for_the_next_hop_as_crlf_dot_stuffed_content(fake_end, start_gateway):
    with RawSink() as raw:
        running = start_gateway(next_hop_url=f"smtp://127.0.0.1:{raw.port}")
        body = smuggling_body(fake_end)
        assert send_raw(running.port, body)[-2:] == [250, 221]
        (message,) = raw.wait_for(1)
        assert_clean_wire(message)
        assert message.content() == crlf_line_endings(as_a_server_reads(body))
        assert message.mail_from == f"MAIL FROM:<{SENDER}>".encode()
        assert message.rcpt_tos == (f"RCPT TO:<{RECIPIENT}>".encode(),)


# (".\x00" is no case: the client's leading dot is taken off as transparency, leaving "\x00")
@pytest.mark.parametrize("nul_dot", [b"\r\n\x00.\r\n", b"\r\n\x00.\x00\r\n", b"\n\x00\x00.\n"])
def test_a_line_of_a_dot_and_nul_is_refused_and_nothing_is_relayed(nul_dot, sink, start_gateway):
    """A next hop that drops NUL before looking for the end of data would see CRLF.CRLF."""
    running = start_gateway()
    codes = send_raw(running.port, smuggling_body(nul_dot))
    assert codes == [220, 250, 250, 250, 354, 554, 221]
    assert sink.messages == []


def test_nul_elsewhere_is_refused_naming_it(sink, start_gateway):
    """Readers disagree about NUL (C strings end there), so the message has no one reading."""
    running = start_gateway()
    assert send_raw(running.port, HEAD + b"a\x00.b\r\n\x00\r\n")[-2:] == [554, 221]
    assert sink.messages == []


def test_pass_through_mail_with_bare_line_ends_and_dot_lines_is_otherwise_byte_identical(
    start_gateway,
):
    body = (
        b"From: somu@city.example.lg.jp\nTo: tanaka@partner.example.com\r\nSubject: dots\r\r\n"
        b"\n.hidden after LF\n..two after LF\r\n..stuffed by the client\r\n...\r\nbare\rCR\r\n"
    )
    with RawSink() as raw:
        running = start_gateway(next_hop_url=f"smtp://127.0.0.1:{raw.port}")
        assert send_raw(running.port, body)[-2:] == [250, 221]
        (message,) = raw.wait_for(1)
    assert_clean_wire(message)
    received = as_a_server_reads(body)
    assert b"\n.hidden after LF\n..two after LF\r\n.stuffed by the client\r\n..\r\n" in received
    assert message.content() == crlf_line_endings(received)


def sloppy_ppap_mail() -> tuple[bytes, tuple[str, ...]]:
    """Corpus 01 (Outlook, encrypted ZIP) as a sloppy client might send it: LF-only lines, a bare
    CR and lines that start with a dot in the text part (dot-stuffed for the CRLF reading)."""
    mail = corpus_mail("01_outlook_jis_aes256")
    marker = b"E-mail somu@city.example.lg.jp\r\n"
    assert marker in mail.raw
    extra = b"..dot line\r\n.\n...\r\nbare\rCR\r\n"
    raw = mail.raw.replace(marker, marker + extra, 1).replace(b"\r\n", b"\n", 40)
    return raw, tuple(mail.rcpt_tos)


def test_converted_mail_leaves_crlf_dot_stuffed_and_its_dkim_signature_verifies(
    tmp_path, start_gateway
):
    key = generate_dkim_key("city.example.lg.jp", "smuggle", tmp_path / "dkim", "ed25519-sha256")
    records = {key.txt_name.encode(): key.txt_value.encode()}
    raw_mail, rcpts = sloppy_ppap_mail()
    with RawSink() as raw:
        running = start_gateway(
            {"dkim": {"keys": [{"domain": "city.example.lg.jp", "selector": "smuggle",
                                "key_file": str(key.key_path), "algorithm": "ed25519-sha256"}]}},
            next_hop_url=f"smtp://127.0.0.1:{raw.port}",
        )
        assert send_raw(running.port, raw_mail, rcpts)[-2:] == [250, 221]
        messages = raw.wait_for(len(rcpts))
    assert len(messages) == len(rcpts)
    for message in messages:
        assert_clean_wire(message)
        content = message.content()
        assert content.startswith(b"DKIM-Signature:") and b"/d/" in content, "converted and signed"
        assert dkim.verify(content, dnsfunc=lambda name, timeout=5: records[name])


# -- the DATA reader reads in runs ending at ".\r\n": what a line-by-line reader got right too --


def test_lines_ending_in_a_dot_and_stuffed_dots_come_through_as_written(sink, start_gateway):
    running = start_gateway()
    body = HEAD + b"\r\nEnd of a sentence.\r\n..leading dot\r\n..\r\n.x\r\nlast.\r\n"
    assert send_raw(running.port, body)[-2:] == [250, 221]
    (message,) = sink.wait_for(1)
    assert message.data == as_a_server_reads(body)
    assert b"\r\nEnd of a sentence.\r\n.leading dot\r\n.\r\nx\r\nlast.\r\n" in message.data


def test_end_of_data_split_across_packets_ends_it_once(sink, start_gateway):
    running = start_gateway()
    with RawClient(running.port) as client:
        open_transaction(client)
        for piece in (HEAD + b"\r\nbody\r", b"\n", b".", b"\r", b"\n"):
            client.send(piece)
            time.sleep(0.05)
        assert client.reply()[0] == 250
        assert client.command(b"QUIT")[0] == 221
    (message,) = sink.wait_for(1)
    assert message.data.endswith(b"\r\nbody\r\n")


def test_a_message_whose_first_line_is_the_dot_is_empty_not_endless(sink, start_gateway):
    running = start_gateway()
    with RawClient(running.port) as client:
        open_transaction(client)
        client.send(b".\r\n")
        assert client.reply()[0] in (250, 554)  # ended: whatever the relay makes of nothing
        assert client.command(b"QUIT")[0] == 221


def test_a_long_base64_body_arrives_byte_for_byte(sink, start_gateway):
    import base64
    import os

    running = start_gateway()
    lines = base64.encodebytes(os.urandom(3 * 1024 * 1024)).replace(b"\n", b"\r\n")
    body = HEAD + b"\r\n" + lines
    assert send_raw(running.port, body)[-2:] == [250, 221]
    assert sink.wait_for(1)[0].data == body
