"""A real Postfix in front of the gateway, set up with the exact lines of docs/postfix.md.

swaks → Postfix (content_filter) → gateway → Postfix re-injection port → relayhost = RecordingSink.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.store.passwords import hash_token
from tests.support.postfix import PostfixInstance, free_port, missing_programs, program
from tests.support.raw_sink import RawClient
from tests.support.received import assert_no_zip_bytes, links_in, texts_of
from tests.support.running import (
    CORPUS,
    RunningGateway,
    corpus_mail,
    make_config,
    send_exact,
)

MAIL = "01_outlook_jis_aes256"
# Only the relayed copies reach the sink: no receipts or download notices to the sender.
QUIET_POLICY = {"policy": {"sender_receipt": False, "notify_sender": "never"}}


@pytest.fixture(autouse=True)
def postfix_installed() -> None:
    if reason := missing_programs():
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance is started with `postfix -c DIR start`, which needs root")


def swaks(port: int, mail_from: str, rcpt_tos: list[str], eml: Path) -> None:
    command = [program("swaks") or "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
               "--from", mail_from, "--to", ",".join(rcpt_tos), "--data", f"@{eml}"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def gateway_config(tmp_path: Path, reinject_port: int, listen_port: int | None = None):
    config = make_config(tmp_path, f"smtp://127.0.0.1:{reinject_port}", QUIET_POLICY)
    if listen_port is None:
        return config
    return replace(config, smtp=replace(config.smtp, listen_port=listen_port))


def test_mail_submitted_to_postfix_with_swaks_arrives_rewritten_through_the_gateway(tmp_path, sink):
    mail = corpus_mail(MAIL)
    attachment = mail.side["attachments"][0]
    reinject_port = free_port()
    with RunningGateway(gateway_config(tmp_path, reinject_port)) as gateway, \
            PostfixInstance.in_front(gateway.port, sink.port, reinject_port=reinject_port) as postfix:
        swaks(postfix.listen_port, mail.mail_from, mail.rcpt_tos, CORPUS / "mail" / f"{MAIL}.eml")
        received = sink.wait_for(len(mail.rcpt_tos), timeout=30)
        postfix.wait_until_empty(timeout=30)

        assert sorted(r for m in received for r in m.rcpt_tos) == sorted(mail.rcpt_tos)
        zip_bytes = (CORPUS / attachment["corpus_file"]).read_bytes()
        tokens = []
        for message in received:
            assert_no_zip_bytes(message.data, zip_bytes)
            (token,) = links_in(message.data)
            tokens.append(token)
            assert attachment["filename"] in "".join(texts_of(message.data))
        assert len(set(tokens)) == len(mail.rcpt_tos)
        link = gateway.db.link_by_token_hash(hash_token(tokens[0]))
        (stored,) = gateway.db.files_of(link.transfer_id)
        assert stored.sha256 == attachment["sha256"], "the ZIP reached the gateway byte for byte"

        log = postfix.log()
        assert f"relay=127.0.0.1[127.0.0.1]:{gateway.port}" in log, "Postfix handed it to the gateway"
        assert f"relay=127.0.0.1[127.0.0.1]:{sink.port}" in log, "and delivered the re-injected copies"


def test_postfix_defers_while_the_gateway_is_down_and_delivers_once_after_it_is_back(tmp_path, sink):
    mail = corpus_mail(MAIL)
    reinject_port = free_port()
    first = RunningGateway(gateway_config(tmp_path, reinject_port)).start()
    gateway_port = first.port
    first.stop()  # the gateway is down: nothing listens on its port

    with PostfixInstance.in_front(gateway_port, sink.port, reinject_port=reinject_port) as postfix:
        swaks(postfix.listen_port, mail.mail_from, mail.rcpt_tos, CORPUS / "mail" / f"{MAIL}.eml")
        postfix.wait_for_log(rf"status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{gateway_port}: "
                             r"Connection refused\)", count=len(mail.rcpt_tos))
        (queued,) = postfix.queue()
        assert queued.queue_name == "deferred"
        assert sorted(queued.recipients) == sorted(mail.rcpt_tos)
        assert all("Connection refused" in reason for reason in queued.delay_reasons)
        assert sink.messages == []

        with RunningGateway(gateway_config(tmp_path, reinject_port, listen_port=gateway_port)) as gateway:
            postfix.flush()
            received = sink.wait_for(len(mail.rcpt_tos), timeout=30)
            postfix.wait_until_empty(timeout=30)
            time.sleep(1.0)  # room for a duplicate to show up, if there were one
            assert len(sink.messages) == len(received) == len(mail.rcpt_tos)
            assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(mail.rcpt_tos)
            tokens = {token for message in received for token in links_in(message.data)}
            links = [gateway.db.link_by_token_hash(hash_token(token)) for token in tokens]
            assert len(links) == len(mail.rcpt_tos) and all(link.state == "active" for link in links)
            assert len({link.transfer_id for link in links}) == 1, "one transfer, not one per attempt"
        sent = postfix.wait_for_log(rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{gateway_port}, .*status=sent",
                                    count=len(mail.rcpt_tos))
        assert len(sent) == len(mail.rcpt_tos)


def test_documented_lines_are_what_the_private_instance_runs(sink):
    instance = PostfixInstance.in_front(gateway_port=free_port(), deliver_port=sink.port)
    try:
        instance.write_config()
        main_cf = (instance.config_dir / "main.cf").read_text()
        master_cf = (instance.config_dir / "master.cf").read_text()
    finally:
        instance.stop()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "postfix.md").read_text()
    assert "receive_override_options = no_address_mappings" in doc and \
        "receive_override_options = no_address_mappings" in main_cf
    assert "content_filter = ppapgw:[127.0.0.1]:" in main_cf
    assert f"127.0.0.1:{instance.reinject_port} inet" in master_cf
    assert "  -o content_filter=\n" in master_cf, "re-injected mail is not filtered again"
    assert "10025" not in main_cf + master_cf and "10026" not in main_cf + master_cf


# -- outbound smuggling: what we relay is one message to a strict Postfix next hop -----------

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@partner.example.com>\r\nDATA\r\n"
    b"From: ceo@city.example.lg.jp\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)


def send_verbatim(port: int, body: bytes) -> int:
    """One message whose DATA bytes are body exactly as given (no dot-stuffing); the reply code."""
    with RawClient(port) as client:
        for command in (None, b"EHLO client.test", b"MAIL FROM:<somu@city.example.lg.jp>",
                        b"RCPT TO:<tanaka@partner.example.com>", b"DATA"):
            client.reply() if command is None else client.command(command)
        client.send(body + b".\r\n")
        code = client.reply()[0]
        client.command(b"QUIT")
    return code


@pytest.mark.parametrize("fake_end", [b"\r\n.\r\r\n", b"\r\r\n.\r\r\n"],
                         ids=["crlf-dot-cr-crlf", "cr-crlf-dot-cr-crlf"])
@pytest.mark.parametrize("written", ["dot-stuffed", "verbatim"])
def test_fake_ends_with_cr_before_crlf_reach_a_strict_postfix_as_one_message(
    fake_end, written, tmp_path, sink
):
    """A next hop that took CR CR LF for a line end would see CRLF.CRLF in the fake end. Written
    dot-stuffed by the client, the content carries it, dot and all; written verbatim, the dot is
    SMTP transparency and goes. Either way we relay CRLF lines, a dot line stuffed, to a Postfix
    that rejects bare newlines, and one message arrives with the commands as its content."""
    head = (b"From: somu@city.example.lg.jp\r\nTo: tanaka@partner.example.com\r\n"
            b"Subject: smuggling probe\r\nMessage-ID: <probe-cr@city.example.lg.jp>\r\n\r\n"
            b"the real message")
    body = head + fake_end + SMUGGLED
    content_end = {"dot-stuffed": b"the real message\r\n.\r\n",
                   "verbatim": b"the real message\r\n\r\n"}[written] + SMUGGLED
    postfix = PostfixInstance.relay(sink.port, main_cf=("smtpd_forbid_bare_newline = reject",))
    with postfix, RunningGateway(make_config(
            tmp_path, f"smtp://127.0.0.1:{postfix.listen_port}", QUIET_POLICY)) as gateway:
        assert "smtpd_forbid_bare_newline = reject" in (postfix.config_dir / "main.cf").read_text()
        if written == "dot-stuffed":
            code, _ = send_exact(gateway.port, "somu@city.example.lg.jp",
                                 ["tanaka@partner.example.com"], body)
        else:
            code = send_verbatim(gateway.port, body)
        assert code == 250
        (message,) = sink.wait_for(1, timeout=30)
        postfix.wait_until_empty(timeout=30)
        time.sleep(1.0)  # room for a smuggled second message to show up, if there were one
        log = postfix.log()

    assert len(sink.messages) == 1, "one message, nothing smuggled"
    assert (message.mail_from, message.rcpt_tos) == ("somu@city.example.lg.jp",
                                                     ["tanaka@partner.example.com"])
    assert message.data.endswith(content_end), "the fake end and the commands stay content"
    assert "bare <LF>" not in log and "reject" not in log, log
    assert len(re.findall(r"status=sent", log)) == 1
