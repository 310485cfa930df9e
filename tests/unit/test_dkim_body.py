"""What the signer does itself around dkimpy: the body hash, a chunk at a time, is dkimpy's
relaxed body hash whatever the chunks; signing a large copy costs the copy, not dkimpy's line
list; RSA signatures come from `cryptography`, the same bytes dkimpy's would be."""

from __future__ import annotations

import base64
import hashlib
import random
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed

from gateway.outbound.dkim import DkimKey, DkimSigner
from gateway.outbound.dkim_body import relaxed_body_hash
from gateway.outbound.dkim_keys import generate_dkim_key, load_private_key
from gateway.wire import crlf_line_endings
from tests.support import evasions as ev
from tests.support.corpus import CORPUS

HEAD = b"From: <somu@city.example.lg.jp>\r\nSubject: s\r\n\r\n"
PIECES = [b"a", b"b", b" ", b"\t", b"\r\n", b"\r\n", b"  \r\n", b"x\t y", b"\t\r\n"]


def dkimpy_hash(body: bytes) -> bytes:
    return base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())


def test_random_bodies_hash_as_dkimpy_hashes_them_whatever_the_chunk():
    """White space runs, white-space-only lines, empty lines at the end or not, no line end at
    the end, the empty body: chunks of 1, 2, 3, 5 and 64 bytes cut through all of them."""
    rng = random.Random("dkim-body")
    for _ in range(2000):
        body = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        expected = dkimpy_hash(body)
        for chunk in (1, 2, 3, 5, 64):
            assert relaxed_body_hash(HEAD + body, len(HEAD), chunk) == expected, (body, chunk)


@pytest.mark.parametrize("path", sorted((CORPUS / "mail").glob("*.eml")), ids=lambda p: p.stem)
def test_corpus_bodies_hash_as_dkimpy_hashes_them(path: Path):
    message = crlf_line_endings(path.read_bytes())
    start = message.find(b"\r\n\r\n") + 4
    for chunk in (7, 1000, 1 << 20):
        assert relaxed_body_hash(message, start, chunk) == dkimpy_hash(message[start:])


def test_a_large_copy_is_signed_holding_a_chunk_not_its_lines(tmp_path: Path):
    key = generate_dkim_key("city.example.lg.jp", "mem", tmp_path, "ed25519-sha256")
    signer = DkimSigner([DkimKey("city.example.lg.jp", "mem", load_private_key(key.key_path),
                                 "ed25519-sha256")])
    head = (b"From: <somu@city.example.lg.jp>\r\nTo: <t@partner.example.com>\r\nSubject: big\r\n"
            b"MIME-Version: 1.0\r\n")
    message = ev.mixed(ev.TEXT, ev.zip_part(random.randbytes(6 * 1024 * 1024)), head=head)
    tracemalloc.start()
    try:
        signed = signer.sign(message)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"sign: peak {peak / len(message):.2f} x the copy")
    assert signed.endswith(message) and signed.startswith(b"DKIM-Signature:")
    assert peak < 1.5 * len(message)  # the signed copy (1); dkimpy's own way: 3.6
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: key.txt_value.encode())


def test_rsa_signatures_are_made_by_cryptography_and_are_the_ones_dkimpy_makes(tmp_path: Path,
                                                                                monkeypatch):
    """dkimpy's RSA is pure Python (about 6.5 ms a signature); the signer hands the header hash
    to `cryptography` instead. PKCS #1 v1.5 is deterministic, so the header is the one dkimpy
    writes byte for byte (the golden files hold one), and it verifies."""
    key = generate_dkim_key("city.example.lg.jp", "rsa", tmp_path, "rsa-sha256")
    pem = load_private_key(key.key_path)
    message = ev.mixed(ev.TEXT, ev.zip_part(), head=(
        b"From: <somu@city.example.lg.jp>\r\nTo: <t@partner.example.com>\r\nSubject: s\r\n"
        b"MIME-Version: 1.0\r\n"))
    signer = DkimSigner([DkimKey("city.example.lg.jp", "rsa", pem, "rsa-sha256")],
                        clock=lambda: datetime(2026, 12, 7, tzinfo=timezone.utc))
    ours = signer.sign(message)

    def dkimpy_rsa(*args):
        raise AssertionError("dkimpy's own RSA was used")

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkimpy_rsa)
    assert signer.sign(message) == ours  # made without dkimpy's RSA
    monkeypatch.undo()
    assert dkim.verify(ours, dnsfunc=lambda name, timeout=5: key.txt_value.encode())
