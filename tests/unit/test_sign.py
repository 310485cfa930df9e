"""DKIM keys and signatures: what we publish in DNS verifies what we sign, with real dkimpy."""

from __future__ import annotations

import base64
import re
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.mime import parse_message
from gateway.outbound.dkim import DkimKey, DkimSigner, dkimpy_private_key
from gateway.outbound.dkim_keys import GeneratedKey, generate_dkim_key, load_private_key
from tests.support.dkim_check import DOMAIN, dkim_key, rewritten_corpus_mail, signer_for, verify_all


def signature_tags(signed: bytes) -> dict[bytes, bytes]:
    value = parse_message(signed)["DKIM-Signature"]
    return dkim.util.parse_tag_value(value.encode("ascii"))


def raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory) -> GeneratedKey:
    return generate_dkim_key(DOMAIN, "ppap2026", tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def ed25519_key(tmp_path_factory) -> GeneratedKey:
    return generate_dkim_key(DOMAIN, "ed2026", tmp_path_factory.mktemp("keys"), "ed25519-sha256")


@pytest.fixture(scope="module")
def rewritten() -> bytes:
    return rewritten_corpus_mail()


# --- keys ---------------------------------------------------------------------------------


def test_rsa_key_file_is_private_pkcs8_and_named_for_its_record(rsa_key: GeneratedKey) -> None:
    assert rsa_key.key_path.name == f"ppap2026._domainkey.{DOMAIN}.rsa.pem"
    assert stat.S_IMODE(rsa_key.key_path.stat().st_mode) == 0o600
    pem = load_private_key(rsa_key.key_path)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_rsa_record_publishes_the_public_half_in_strings_of_at_most_255(rsa_key) -> None:
    assert rsa_key.txt_name == f"ppap2026._domainkey.{DOMAIN}."
    assert rsa_key.txt_value.startswith("v=DKIM1; k=rsa; p=")
    strings = re.findall(r'"([^"]*)"', rsa_key.zone_line)
    assert len(strings) > 1 and all(len(s) <= 255 for s in strings)
    assert rsa_key.zone_line.startswith(f"{rsa_key.txt_name} IN TXT ")
    assert "".join(strings) == rsa_key.txt_value
    key = serialization.load_pem_private_key(rsa_key.key_path.read_bytes(), password=None)
    der = base64.b64decode(rsa_key.txt_value.split("p=")[1])
    published = serialization.load_der_public_key(der)
    assert published.public_numbers() == key.public_key().public_numbers()


def test_ed25519_record_publishes_the_raw_32_byte_key(ed25519_key: GeneratedKey) -> None:
    assert ed25519_key.key_path.name == f"ed2026._domainkey.{DOMAIN}.ed25519.pem"
    assert stat.S_IMODE(ed25519_key.key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(load_private_key(ed25519_key.key_path), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = base64.b64decode(ed25519_key.txt_value.removeprefix("v=DKIM1; k=ed25519; p="))
    assert raw == raw_public(key)
    assert ed25519_key.zone_line == f'{ed25519_key.txt_name} IN TXT "{ed25519_key.txt_value}"'


def test_existing_key_file_is_never_overwritten(rsa_key: GeneratedKey) -> None:
    before = rsa_key.key_path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_dkim_key(DOMAIN, "ppap2026", rsa_key.key_path.parent, bits=1024)
    assert rsa_key.key_path.read_bytes() == before


@pytest.mark.parametrize(
    ("domain", "selector", "algorithm", "bits"),
    [
        (DOMAIN, "../../etc/x", "rsa-sha256", 2048),
        ("city/../x", "s1", "rsa-sha256", 2048),
        (DOMAIN, "", "rsa-sha256", 2048),
        (DOMAIN, "s1", "rsa-sha1", 2048),
        (DOMAIN, "s1", "rsa-sha256", 512),
    ],
)
def test_generation_refuses_bad_names_algorithms_and_sizes(
    tmp_path: Path, domain: str, selector: str, algorithm: str, bits: int
) -> None:
    with pytest.raises(ValueError):
        generate_dkim_key(domain, selector, tmp_path, algorithm, bits)
    assert list(tmp_path.iterdir()) == []


def test_load_private_key_refuses_what_cannot_sign(tmp_path: Path) -> None:
    encrypted = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    unusable = [("junk.pem", b"not a key"), ("encrypted.pem", encrypted), ("big.pem", b"x" * 100_000)]
    for name, content in unusable:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError):
            load_private_key(tmp_path / name)


@pytest.mark.parametrize(
    ("domain", "selector", "algorithm"),
    [
        (DOMAIN, "ppap2026", "ed25519-sha256"),  # an RSA key
        (DOMAIN, "ppap2026", "rsa-sha1"),
        (DOMAIN, "bad selector", "rsa-sha256"),
        ("city.example.lg.jp; x=y", "ppap2026", "rsa-sha256"),
    ],
)
def test_key_settings_that_cannot_make_a_valid_signature_are_refused(
    rsa_key: GeneratedKey, domain: str, selector: str, algorithm: str
) -> None:
    with pytest.raises(ValueError):
        DkimKey(domain, selector, load_private_key(rsa_key.key_path), algorithm)


# --- signing with RSA ---------------------------------------------------------------------


def test_rewritten_mail_signed_with_rsa_verifies_against_the_published_record(
    rsa_key, rewritten
) -> None:
    signed = signer_for(rsa_key).sign(rewritten)
    assert signed.endswith(rewritten)
    assert verify_all(signed, rsa_key) == [True]


def test_signature_is_relaxed_covers_the_headers_and_oversigns_from(rsa_key, rewritten) -> None:
    signed = signer_for(rsa_key).sign(rewritten)
    tags = signature_tags(signed)
    assert (tags[b"c"], tags[b"d"], tags[b"s"]) == (b"relaxed/relaxed", DOMAIN.encode(), b"ppap2026")
    signed_headers = [h.strip() for h in tags[b"h"].split(b":")]
    assert signed_headers.count(b"from") == 2
    for name in (b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version"):
        assert name in signed_headers
    assert b"content-type" in signed_headers
    assert b"x-mailer" not in signed_headers and b"x-ppap-gateway" not in signed_headers


def test_a_changed_body_byte_fails_verification(rsa_key, rewritten) -> None:
    signed = signer_for(rsa_key).sign(rewritten)
    tampered = signed.replace(b"https://f.example/d/t0k", b"https://f.example/d/t0K", 1)
    assert tampered != signed
    assert verify_all(tampered, rsa_key) == [False]


def test_bare_line_feeds_are_made_crlf_so_the_signature_still_verifies(rsa_key, rewritten) -> None:
    mangled = rewritten.replace(b"\r\n", b"\n").replace(b"JST\n", b"JST\r", 1)
    signed = signer_for(rsa_key).sign(mangled)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", signed) is None
    assert verify_all(signed, rsa_key) == [True]


def test_mail_from_a_domain_without_a_key_is_returned_unchanged(rsa_key, rewritten) -> None:
    other = rewritten.replace(b"<somu@city.example.lg.jp>", b"<somu@other.example.jp>", 1)
    assert signer_for(rsa_key).sign(other) == other
    parent = rewritten.replace(b"<somu@city.example.lg.jp>", b"<somu@example.lg.jp>", 1)
    assert signer_for(rsa_key).sign(parent) == parent  # exact domain only, no parent or child
    no_from = b"To: a@b.example\r\n\r\nhi\n"
    assert signer_for(rsa_key).sign(no_from) is no_from


def test_key_domain_matches_the_from_domain_case_insensitively(rsa_key, rewritten) -> None:
    signer = signer_for(rsa_key, domain="City.Example.LG.JP")
    assert signer.domains() == {DOMAIN}
    shouting = rewritten.replace(b"<somu@city.example.lg.jp>", b"<somu@CITY.example.lg.jp>", 1)
    assert verify_all(signer.sign(shouting), rsa_key) == [True]


@pytest.mark.parametrize(
    "broken",
    [
        b"From: somu@city.example.lg.jp\r\nthis is no header\r\n\r\nbody\r\n",
        b" leading continuation\r\nFrom: somu@city.example.lg.jp\r\n\r\nbody\r\n",
    ],
)
def test_message_dkimpy_cannot_read_goes_out_unsigned(rsa_key, broken: bytes) -> None:
    assert signer_for(rsa_key).sign(broken) == broken


def test_from_with_mailboxes_of_two_domains_is_not_signed(rsa_key) -> None:
    message = b"From: a@city.example.lg.jp, b@other.example.jp\r\n\r\nbody\r\n"
    assert signer_for(rsa_key).sign(message) == message
    same = b"From: a@city.example.lg.jp, b@city.example.lg.jp\r\n\r\nbody\r\n"
    assert verify_all(signer_for(rsa_key).sign(same), rsa_key) == [True]


# --- signing with Ed25519 -------------------------------------------------------------------


def test_ed25519_key_goes_to_dkimpy_as_the_base64_seed_of_the_published_key(ed25519_key) -> None:
    secret = dkimpy_private_key(load_private_key(ed25519_key.key_path))
    rebuilt = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(secret, validate=True))
    published = base64.b64decode(ed25519_key.txt_value.split("p=")[1])
    assert raw_public(rebuilt) == published


def test_rewritten_mail_signed_with_ed25519_verifies_against_the_published_record(
    ed25519_key, rewritten
) -> None:
    assert verify_all(signer_for(ed25519_key).sign(rewritten), ed25519_key) == [True]


def test_rsa_and_ed25519_keys_of_one_domain_both_sign(rsa_key, ed25519_key, rewritten) -> None:
    signed = signer_for(rsa_key, ed25519_key).sign(rewritten)
    assert verify_all(signed, rsa_key, ed25519_key) == [True, True]
    tampered = signed.replace(b"https://f.example/d/t0k", b"https://f.example/d/t0K", 1)
    assert verify_all(tampered, rsa_key, ed25519_key) == [False, False]


# --- the signature time -------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["rsa_key", "ed25519_key"])
def test_the_clock_sets_t_and_the_rest_is_what_dkimpy_signs_at_that_time(
    key_name: str, rewritten: bytes, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = request.getfixturevalue(key_name)
    at = datetime(2026, 11, 26, 1, 30, tzinfo=UTC)
    signed = DkimSigner([dkim_key(key)], clock=lambda: at).sign(rewritten)
    assert signature_tags(signed)[b"t"] == str(int(at.timestamp())).encode()
    assert verify_all(signed, key) == [True]
    # dkimpy's own dkim.sign(), its clock stopped at the same second, signs the same bytes.
    monkeypatch.setattr(dkim.time, "time", lambda: at.timestamp())
    own = dkim.sign(rewritten, dkim_key(key).selector.encode(), DOMAIN.encode(),
                    dkimpy_private_key(dkim_key(key).private_key),
                    canonicalize=(b"relaxed", b"relaxed"),
                    signature_algorithm=dkim_key(key).algorithm.encode(),
                    include_headers=[h.encode() for h in signed_header_names(signed)])
    assert signed == own + rewritten


def test_without_a_clock_the_signature_time_is_now(rsa_key, rewritten) -> None:
    before = int(time.time())
    tags = signature_tags(signer_for(rsa_key).sign(rewritten))
    assert before <= int(tags[b"t"]) <= int(time.time())


def signed_header_names(signed: bytes) -> list[str]:
    return [name.strip().decode() for name in signature_tags(signed)[b"h"].split(b":")]
