"""Policy: departments by sender, internal recipients pass, external ones convert."""

import base64
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import build_config
from gateway.mime import parse_message
from gateway.model import (
    Action,
    Attachment,
    Classification,
    ContainerReport,
    Envelope,
    ZipReport,
    ZipVerdict,
)
from gateway.pipeline.classify import classify
from gateway.pipeline.policy import decide, department_for, is_internal, sender_matches

CONFIG = build_config(
    {
        "gateway": {"internal_domains": ["city.example.lg.jp", "*.city.example.lg.jp"]},
        "departments": [
            {"name": "somu", "senders": ["somu@city.example.lg.jp"], "policy": {"locale": "en"}},
            {"name": "kikaku", "senders": ["kikaku*@city.example.lg.jp", "branch.example.jp"],
             "policy": {"convert": "all-attachments"}},
            {"name": "off", "senders": ["@off.example.jp"], "policy": {"convert": "none"}},
        ],
    },
    environ={},
)


def attachment(verdict: ZipVerdict, path=(1,)) -> Attachment:
    return Attachment(path, "a.zip", "application/zip", b"PK", ZipReport(verdict))


def test_sender_matchers():
    assert sender_matches("somu@city.example.lg.jp", "SOMU@City.Example.LG.JP")
    assert sender_matches("kikaku*@city.example.lg.jp", "kikaku2@city.example.lg.jp")
    assert sender_matches("branch.example.jp", "x@branch.example.jp")
    assert sender_matches("@off.example.jp", "y@off.example.jp")
    assert not sender_matches("branch.example.jp", "x@sub.branch.example.jp")
    assert sender_matches("*.example.jp", "x@sub.example.jp")


def test_first_matching_department_wins_else_default():
    assert department_for(CONFIG, "somu@city.example.lg.jp")[0] == "somu"
    assert department_for(CONFIG, "kikaku@city.example.lg.jp")[0] == "kikaku"
    name, policy = department_for(CONFIG, "nobody@city.example.lg.jp")
    assert name == "default" and policy == CONFIG.policy


def test_internal_domains_and_subdomains():
    assert is_internal(CONFIG, "a@city.example.lg.jp")
    assert is_internal(CONFIG, "a@ward.city.example.lg.jp")
    assert not is_internal(CONFIG, "a@partner.example.com")
    assert not is_internal(CONFIG, "a@evilcity.example.lg.jp")


def test_mixed_recipients_internal_pass_external_convert():
    envelope = Envelope("somu@city.example.lg.jp", ("a@partner.example.com", "b@city.example.lg.jp"))
    decision = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    actions = {r.address: r.action for r in decision.recipients}
    assert actions == {"a@partner.example.com": Action.CONVERT, "b@city.example.lg.jp": Action.PASS}
    assert decision.converting and decision.department == "somu"


def test_plain_zip_passes_but_corrupt_zip_is_converted():
    envelope = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    plain = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.PLAIN_ZIP),)))
    assert not plain.converting and plain.reason == "pass"
    corrupt = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.CORRUPT_ZIP),)))
    assert corrupt.converting


def test_all_attachments_and_none_modes():
    pdf = attachment(ZipVerdict.NOT_ZIP)
    all_mode = decide(CONFIG, Envelope("kikaku@city.example.lg.jp", ("a@p.example.com",)),
                      Classification((pdf,)))
    assert all_mode.converting
    none_mode = decide(CONFIG, Envelope("u@off.example.jp", ("a@p.example.com",)),
                       Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    assert not none_mode.converting


def test_an_archive_under_a_genuine_signature_is_refused_unless_policy_converts_it():
    envelope = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    signed = Classification(
        (replace(attachment(ZipVerdict.ENCRYPTED_ZIP), inside_signed=True),), signed=True)
    decision = decide(CONFIG, envelope, signed)
    assert decision.reason == "refused" and not decision.converting
    assert decision.refusal.enhanced == "5.7.0" and "signature" in decision.refusal.text
    converting = build_config({"policy": {"convert_signed": True}}, environ={})
    assert decide(converting, envelope, signed).converting


def test_signed_mail_without_an_archive_passes():
    envelope = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    assert decide(CONFIG, envelope, Classification((), signed=True)).reason == "signed"


def test_mail_encrypted_to_a_key_is_refused_unless_policy_passes_it():
    envelope = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    opaque = Classification((), opaque=("message: encrypted to the recipient's key",))
    assert decide(CONFIG, envelope, opaque).refusal.enhanced == "5.7.0"
    passing = build_config({"policy": {"encrypted_mail": "pass"}}, environ={})
    assert decide(passing, envelope, opaque).reason == "encrypted"
    inside = Envelope("x@city.example.lg.jp", ("b@city.example.lg.jp",))
    assert decide(CONFIG, inside, opaque).refusal is None


def test_a_message_that_cannot_be_inspected_is_refused_for_outside_recipients_only():
    fragment = Classification((), uninspectable=("part 1: a message/partial fragment",))
    outside = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    decision = decide(CONFIG, outside, fragment)
    assert decision.refusal.enhanced == "5.6.0" and "message/partial" in decision.refusal.text
    inside = Envelope("x@city.example.lg.jp", ("b@city.example.lg.jp",))
    assert decide(CONFIG, inside, fragment).reason == "pass"


def test_only_internal_recipients_means_no_conversion():
    envelope = Envelope("x@city.example.lg.jp", ("b@city.example.lg.jp",))
    decision = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    assert decision.reason == "internal" and not decision.converting


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "containers"
CORPUS_FILES = Path(__file__).resolve().parents[1] / "corpus" / "files"
EXTERNAL = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))


def container(kind: str, encrypted: bool, path=(1,)) -> Attachment:
    report = ContainerReport(kind, encrypted, "")
    return Attachment(path, "f", "application/octet-stream", b"x", ZipReport(ZipVerdict.NOT_ZIP), container=report)


@pytest.mark.parametrize("kind", ["7z", "office", "pdf"])
def test_encrypted_container_is_converted_and_a_plain_one_passes(kind: str):
    encrypted = decide(CONFIG, EXTERNAL, Classification((container(kind, True),)))
    assert encrypted.converting and encrypted.reason == "convert"
    plain = decide(CONFIG, EXTERNAL, Classification((container(kind, False),)))
    assert not plain.converting and plain.reason == "pass"


def test_only_the_encrypted_container_leaves_as_a_link():
    locked, open_pdf = container("office", True, (1,)), container("pdf", False, (2,))
    decision = decide(CONFIG, EXTERNAL, Classification((open_pdf, locked)))
    assert decision.to_convert == (locked,)


def test_none_mode_leaves_encrypted_containers_alone_and_internal_mail_passes():
    off = Envelope("u@off.example.jp", ("a@p.example.com",))
    assert not decide(CONFIG, off, Classification((container("7z", True),))).converting
    internal = Envelope("x@city.example.lg.jp", ("b@city.example.lg.jp",))
    assert decide(CONFIG, internal, Classification((container("7z", True),))).reason == "internal"


def test_real_files_convert_when_encrypted_and_pass_when_plain():
    files = [
        ("locked.7z", (FIXTURES / "encrypted_packed_header.7z").read_bytes()),
        ("open.7z", (FIXTURES / "plain_packed_header.7z").read_bytes()),
        ("locked.docx", (FIXTURES / "encrypted.docx").read_bytes()),
        ("locked.pdf", (FIXTURES / "encrypted.pdf").read_bytes()),
        ("open.pdf", (CORPUS_FILES / "12a_plain.pdf").read_bytes()),
        ("open.zip", (CORPUS_FILES / "04_unencrypted_7zip.zip").read_bytes()),
    ]
    parts = b"".join(
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        + f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'.encode()
        + base64.encodebytes(data).replace(b"\n", b"\r\n")
        for name, data in files
    )
    raw = b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n"
    decision = decide(CONFIG, EXTERNAL, classify(parse_message(raw)))
    assert [a.filename for a in decision.to_convert] == ["locked.7z", "locked.docx", "locked.pdf"]


@pytest.mark.parametrize("address", [
    "tanaka%partner.example.com@city.example.lg.jp",
    "partner.example.com!tanaka@city.example.lg.jp",
    '"tanaka@partner.example.com"@city.example.lg.jp',
    '"kacho"@city.example.lg.jp',
    "@partner.example.com:tanaka@city.example.lg.jp",
    "tanaka@[192.0.2.1]",
    "a..b@ward.city.example.lg.jp",
])
def test_an_address_that_could_be_routed_elsewhere_is_never_internal(address):
    assert not is_internal(CONFIG, address)
    envelope = Envelope("somu@city.example.lg.jp", (address, "kacho@city.example.lg.jp"))
    decision = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    actions = {r.address: r.action for r in decision.recipients}
    assert actions == {address: Action.CONVERT, "kacho@city.example.lg.jp": Action.PASS}
