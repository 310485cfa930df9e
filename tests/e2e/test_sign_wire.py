"""A DKIM signature still verifies on the bytes a next hop receives over a real socket: ours, and
a sender's upstream one on mail we pass through (keys and signatures on their own:
tests/unit/test_sign.py)."""

from __future__ import annotations

import asyncio

import dkim
import pytest

from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.dkim_keys import GeneratedKey, generate_dkim_key
from gateway.outbound.smtp import SmtpNextHop
from tests.support.dkim_check import (
    DOMAIN,
    rewritten_corpus_mail,
    signer_for,
    verify_all,
)
from tests.support.raw_sink import RawSink
from tests.support.running import corpus_mail, send_exact

RECIPIENT = "tanaka@partner.example.com"
# Only the relayed copy reaches the sink: no receipt or download notice to the sender.
QUIET = {"policy": {"sender_receipt": False, "notify_sender": "never"}}


@pytest.fixture(scope="module")
def ed25519_key(tmp_path_factory) -> GeneratedKey:
    return generate_dkim_key(DOMAIN, "ed2026", tmp_path_factory.mktemp("keys"), "ed25519-sha256")


@pytest.fixture(scope="module")
def rewritten() -> bytes:
    return rewritten_corpus_mail()


def test_signature_verifies_on_the_bytes_the_next_hop_receives_despite_smuggling_line_ends(
    ed25519_key, rewritten
) -> None:
    """Bare CR/LF and fake ends of data in the body: signed, sent over a socket, checked there."""
    body_start = rewritten.index(b"\r\n\r\n") + 4
    fake_ends = b"a\n.\nb\r.\rc\r\n.\nd\r\n"
    sloppy = rewritten[:body_start] + fake_ends + rewritten[body_start:].replace(b"\r\n", b"\r")
    signed = signer_for(ed25519_key).sign(sloppy)
    message = OutgoingMessage("somu@city.example.lg.jp", ("tanaka@partner.example.com",), signed)
    with RawSink() as raw:
        hop = SmtpNextHop("127.0.0.1", raw.port, starttls="off", timeout=5.0, helo_name="gw.test")
        assert asyncio.run(_deliver_and_close(hop, message)).accepted
        (received,) = raw.wait_for(1)
    assert received.bare_line_ends() == []
    assert received.content() == signed  # what we signed is exactly what arrived
    assert verify_all(received.content(), ed25519_key) == [True]


async def _deliver_and_close(hop: SmtpNextHop, message: OutgoingMessage) -> DeliveryResult:
    try:
        return await hop.deliver(message)
    finally:
        await hop.close()


# -- mail its sender's upstream signed: what we pass stays verifiable, what we change is ours --


def upstream_signed(mail: bytes, key: GeneratedKey) -> bytes:
    """mail as the sender's own MTA signs it before it reaches us: dkimpy itself, simple/simple
    (the canonicalisation that breaks on any changed byte), every header field dkimpy signs."""
    signature = dkim.sign(mail, key.txt_name.split(".")[0].encode(), DOMAIN.encode(),
                          key.key_path.read_bytes(), canonicalize=(b"simple", b"simple"))
    return signature + mail


@pytest.mark.parametrize("name, rcpt", [
    ("01_outlook_jis_aes256", "zaisei@city.example.lg.jp"),  # internal: the ZIP passes as it is
    ("13_no_attachment", "tanaka@partner.example.com"),  # external, nothing to convert
])
def test_upstream_signed_mail_passed_through_still_verifies_at_the_next_hop_byte_for_byte(
    name, rcpt, tmp_path, sink, start_gateway
):
    upstream = generate_dkim_key(DOMAIN, "upstream", tmp_path, "rsa-sha256")
    ours = generate_dkim_key(DOMAIN, "gateway", tmp_path, "ed25519-sha256")
    mail = upstream_signed(corpus_mail(name).raw, upstream)
    assert verify_all(mail, upstream) == [True]
    running = start_gateway({"dkim": {"keys": [{
        "domain": DOMAIN, "selector": "gateway", "key_file": str(ours.key_path),
        "algorithm": "ed25519-sha256"}]}})

    assert send_exact(running.port, "somu@city.example.lg.jp", [rcpt], mail)[0] == 250

    (received,) = sink.wait_for(1)
    assert received.rcpt_tos == [rcpt]
    assert received.data == mail, "passed through: not one byte changed, none added"
    assert verify_all(received.data, upstream, ours) == [True]


def test_upstream_signed_mail_we_convert_carries_our_signature_and_it_verifies(
    tmp_path, sink, start_gateway
):
    upstream = generate_dkim_key(DOMAIN, "upstream", tmp_path, "rsa-sha256")
    ours = generate_dkim_key(DOMAIN, "gateway", tmp_path, "ed25519-sha256")
    mail = upstream_signed(corpus_mail("01_outlook_jis_aes256").raw, upstream)
    running = start_gateway({"dkim": {"keys": [{
        "domain": DOMAIN, "selector": "gateway", "key_file": str(ours.key_path),
        "algorithm": "ed25519-sha256"}]}, **QUIET})

    assert send_exact(running.port, "somu@city.example.lg.jp", [RECIPIENT], mail)[0] == 250

    (received,) = sink.wait_for(1)
    assert b"/d/" in received.data, "converted: the ZIP became a link"
    assert received.data.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    # Ours (on top) verifies; the upstream one, still below it, no longer can: we changed the
    # body it covered, which is why we sign what we rewrite.
    assert verify_all(received.data, upstream, ours) == [True, False]
