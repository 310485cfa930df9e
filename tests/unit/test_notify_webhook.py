"""The webhook's signature scheme and how HTTP statuses are judged (the signed sender against a
real local aiohttp server, alone and driven by the outbox worker:
tests/e2e/test_notify_webhook_http.py)."""

from __future__ import annotations

import json

import pytest

from gateway.notify.webhook import result_for_status, signature, verify_signature

SECRET = b"0123456789abcdef-webhook-secret!"
PASSWORD = "Hk4-zQ9r-Wm2x"
BODY = json.dumps({"recipient": "tanaka@partner.example.com", "password": PASSWORD}).encode()


# -- the signature scheme ----------------------------------------------------------------------


def test_signature_matches_the_documented_scheme_known_answer() -> None:
    # openssl: printf '%s' '1795652000.{"password":"Xy7-pass"}' | openssl dgst -sha256 -hmac '...'
    expected = "sha256=0a5763df04341855025c21283cd7e78629f8f7b13ed1c1571985e9842d98bf71"
    assert signature(b"an-integrators-shared-secret", "1795652000", b'{"password":"Xy7-pass"}') == expected
    assert verify_signature(b"an-integrators-shared-secret", "1795652000",
                            b'{"password":"Xy7-pass"}', expected.upper().replace("SHA256", "sha256"))


@pytest.mark.parametrize(
    ("timestamp", "body", "header"),
    [
        ("1795652000", BODY + b" ", None),  # body changed
        ("1795652001", BODY, None),  # timestamp changed
        ("1795652000", BODY, ""),
        ("1795652000", BODY, "sha256="),
        ("1795652000", BODY, "sha1=" + "0" * 40),
        ("1795652000", BODY, "sha256=ｆｆ"),  # non-ASCII
        ("-1795652000", BODY, None),
        ("1795652000.5", BODY, None),
        ("1" * 40, BODY, None),
        ("", BODY, None),
    ],
)
def test_verify_signature_refuses_anything_changed_or_malformed(timestamp: str, body: bytes,
                                                                header: str | None) -> None:
    good = signature(SECRET, "1795652000", BODY)
    assert verify_signature(SECRET, "1795652000", BODY, good)
    assert not verify_signature(SECRET, timestamp, body, good if header is None else header)


def test_verify_signature_refuses_the_wrong_secret_and_stale_timestamps() -> None:
    header = signature(SECRET, "1795652000", BODY)
    assert not verify_signature(b"another-secret-of-32-bytes-long!", "1795652000", BODY, header)
    assert verify_signature(SECRET, "1795652000", BODY, header, now=1795652000 + 299)
    assert not verify_signature(SECRET, "1795652000", BODY, header, now=1795652000 + 301)
    assert not verify_signature(SECRET, "1795652000", BODY, header, now=1795652000 - 301)


@pytest.mark.parametrize(
    ("status", "accepted", "code"),
    [(200, True, 250), (204, True, 250), (408, False, 451), (429, False, 451), (500, False, 451),
     (503, False, 451), (301, False, 550), (400, False, 550), (401, False, 550), (404, False, 550),
     (410, False, 550), (100, False, 550)],
)
def test_http_status_maps_to_accepted_temporary_or_permanent(status: int, accepted: bool, code: int) -> None:
    result = result_for_status(status)
    assert (result.accepted, result.code) == (accepted, code)
    assert f"HTTP {status}" in result.message


# -- the sender against a real server ----------------------------------------------------------


# -- driven by the worker ----------------------------------------------------------------------
