"""A DKIM signature still verifies on the bytes a next hop receives over a real socket (keys and
signatures on their own: tests/unit/test_sign.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.dkim_keys import GeneratedKey, generate_dkim_key
from gateway.outbound.smtp import SmtpNextHop
from tests.support.dkim_check import DOMAIN, rewritten_corpus_mail, signer_for, verify_all
from tests.support.raw_sink import RawSink


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
