"""Fail closed: each route an encrypted archive once took past the gateway, as a minimal mail
through a real gateway to a real sink. Either the mail is refused with a 5xx that says why, or
every copy that reaches a recipient outside holds no encrypted archive that zipfile, 7-Zip or
libarchive opens (the fuzzer's independent oracle looks) and carries a download link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fuzz.oracle import examine
from tests.support import evasions as ev
from tests.support.received import links_in
from tests.support.running import send, send_exact

SHELL_FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "shells"
_REASONED_5XX = re.compile(r"^5\.\d{1,3}\.\d{1,3} \S")


def send_raw(port: int, data: bytes) -> tuple[int, str]:
    """Over a raw socket, so that line ends arrive exactly as built."""
    return send_exact(port, ev.SENDER, [ev.EXTERNAL], data)


def assert_converted(sink, reply: tuple[int, str]) -> None:
    code, text = reply
    assert code == 250, text
    (message,) = sink.wait_for(1)
    report = examine(message.data)
    assert report.findings == [], report.findings
    assert len(links_in(message.data)) == 1, "the external copy carries its download link"


def assert_refused(reply: tuple[int, str], *words: str) -> None:
    code, text = reply
    assert code == 554 and _REASONED_5XX.match(text), text
    for word in words:
        assert word.lower() in text.lower(), text


# --- 1. framing: the bytes are read once, as the next hop will get them --------------------

@pytest.mark.parametrize("ending", [b"\r\r\n", b"\n", b"\r"], ids=["CR-CR-LF", "LF", "CR"])
def test_odd_line_ends_are_read_as_delivered(sink, start_gateway, ending):
    running = start_gateway()
    assert_converted(sink, send_raw(running.port, ev.line_ends(ending)))


def test_mixed_line_ends_are_read_as_delivered(sink, start_gateway):
    running = start_gateway()
    assert_converted(sink, send_raw(running.port, ev.mixed_line_ends()))


def test_nul_is_refused_naming_it(sink, start_gateway):
    running = start_gateway()
    data = ev.ordinary().replace(b"attached.", b"attached.\x00")
    assert_refused(send(running.port, ev.SENDER, [ev.EXTERNAL], data), "NUL")
    assert sink.messages == []


# --- 2. a limit that stops inspection refuses -----------------------------------------------

@pytest.mark.parametrize("build", [ev.padded_header_then_deep, ev.padded_header_then_wide],
                         ids=["deep", "wide"])
def test_a_part_header_hiding_structure_is_refused(sink, start_gateway, build):
    running = start_gateway()
    assert_refused(send(running.port, ev.SENDER, [ev.EXTERNAL], build()), "header", "64 KiB")
    assert sink.messages == []


def test_nesting_past_the_limit_is_refused(sink, start_gateway):
    running = start_gateway()
    assert_refused(send(running.port, ev.SENDER, [ev.EXTERNAL], ev.deep(60)), "deeper than 50")


# --- 3. archives by content, whatever the label or offset ----------------------------------

@pytest.mark.parametrize("build", [
    ev.zip_between_junk,
    lambda: ev.zip_typed(b"text/plain; charset=us-ascii"),
    lambda: ev.zip_typed(b"text/html"),
    lambda: ev.zip_typed(b"message/delivery-status"),
    ev.multipart_without_boundary,
], ids=["junk-around", "text-plain", "text-html", "delivery-status", "no-boundary"])
def test_an_archive_is_found_by_its_bytes(sink, start_gateway, build):
    running = start_gateway()
    assert_converted(sink, send(running.port, ev.SENDER, [ev.EXTERNAL], build()))


def test_a_message_fragment_cannot_be_inspected_and_is_refused(sink, start_gateway):
    running = start_gateway()
    fragment = ev.mixed(ev.TEXT, b"Content-Type: message/partial; id=\"x@y\"; number=1; total=2"
                                 b"\r\n\r\n" + ev.ordinary()[:400])
    assert_refused(send(running.port, ev.SENDER, [ev.EXTERNAL], fragment), "partial")
    assert sink.messages == []


# --- 4. containers are opened ---------------------------------------------------------------

@pytest.mark.parametrize("build", [
    ev.forwarded,
    lambda: ev.forwarded(encoding=b"quoted-printable"),
    lambda: ev.forwarded(b"message/global"),
    ev.eml_as_octet_stream,
    ev.zip_in_plain_zip,
    lambda: ev.zip_in_plain_zip(0),
    ev.winmail,
    ev.base64_in_body,
    ev.uuencoded_in_body,
], ids=["rfc822-base64", "rfc822-qp", "global-base64", "eml-octet-stream", "zip-in-zip",
        "zip-in-stored-zip", "tnef", "base64-in-text", "uuencode-in-text"])
def test_an_archive_inside_a_container_is_converted(sink, start_gateway, build):
    running = start_gateway()
    assert_converted(sink, send(running.port, ev.SENDER, [ev.EXTERNAL], build()))


# --- 5. only genuine shells count -----------------------------------------------------------

@pytest.mark.parametrize("build", [ev.fake_signed, ev.garbage_pkcs7_mime_beside,
                                   ev.fake_encrypted], ids=["signed", "pkcs7-mime", "encrypted"])
def test_a_fake_shell_is_inspected_like_any_mail(sink, start_gateway, build):
    running = start_gateway()
    assert_converted(sink, send(running.port, ev.SENDER, [ev.EXTERNAL], build()))


def test_an_archive_in_genuinely_signed_mail_is_refused_saying_why(sink, start_gateway):
    running = start_gateway()
    reply = send(running.port, ev.SENDER, [ev.EXTERNAL], ev.smime(signed=True))
    assert_refused(reply, "signed", "signature")
    assert sink.messages == []


def test_an_archive_typed_as_a_signature_inside_signed_content_is_still_found(sink, start_gateway):
    """Only the genuine signature part itself is passed over, not a part inside the signed
    content that merely carries its type."""
    running = start_gateway()
    disguised = ev.smime(signed=True, zip_headers=b"Content-Type: application/pkcs7-signature\r\n"
                                                  b"Content-Transfer-Encoding: base64\r\n")
    assert_refused(send(running.port, ev.SENDER, [ev.EXTERNAL], disguised), "signature")
    assert sink.messages == []


def test_the_part_beside_a_genuine_pgp_encryption_is_inspected(sink, start_gateway):
    running = start_gateway({"policy": {"encrypted_mail": "pass"}})
    armored = (SHELL_FIXTURES / "encrypted_pubkey.asc").read_bytes()
    data = ev.pgp_encrypted_with_zip_beside(armored)
    assert_converted(sink, send(running.port, ev.SENDER, [ev.EXTERNAL], data))


def test_an_archive_in_signed_mail_converts_when_the_policy_says_so(sink, start_gateway):
    running = start_gateway({"policy": {"convert_signed": True}})
    assert_converted(sink, send(running.port, ev.SENDER, [ev.EXTERNAL], ev.smime(signed=True)))


def test_mail_encrypted_to_a_key_is_refused_by_default(sink, start_gateway):
    running = start_gateway()
    assert_refused(send(running.port, ev.SENDER, [ev.EXTERNAL], ev.smime(signed=False)),
                   "encrypted")
    assert sink.messages == []


def test_mail_encrypted_to_a_key_passes_where_the_policy_allows_it(sink, start_gateway):
    running = start_gateway({"policy": {"encrypted_mail": "pass"}})
    data = ev.smime(signed=False)
    assert send(running.port, ev.SENDER, [ev.EXTERNAL], data)[0] == 250
    assert sink.wait_for(1)[0].data == data


def test_inside_mail_is_not_held_to_the_outside_rules(sink, start_gateway):
    running = start_gateway()
    data = ev.smime(signed=False)
    assert send(running.port, ev.SENDER, ["kacho@city.example.lg.jp"], data)[0] == 250
    assert sink.wait_for(1)[0].data == data
