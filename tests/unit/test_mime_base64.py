"""Clean base64 (every '=' at its end, no stray character) is decoded by pybase64 instead of
binascii: the two must give the same bytes, or both fail, for everything that takes that path."""

from __future__ import annotations

import base64
import binascii
import os
import random
from email.message import Message

import pytest

from gateway.mime import _base64_body, _base64_text, _decode_clean_base64

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SPACE = b"\r\n\t\x0b\x0c "


def _outcome(decode, data) -> bytes | str:
    try:
        return decode(data)
    except binascii.Error:
        return "binascii.Error"


def _clean_base64(rng: random.Random) -> bytes:
    """Letters and white space, then maybe padding: wrong lengths and padding included."""
    body = bytes(rng.choice(_ALPHABET + _SPACE * 3) for _ in range(rng.randrange(0, 41)))
    tail = bytes(rng.choice(b"==" + _SPACE) for _ in range(rng.randrange(0, 5)))
    return body + (b"=" + tail if tail and rng.random() < 0.5 else tail)


def test_pybase64_decodes_clean_base64_as_binascii_does() -> None:
    rng = random.Random(20261207)
    failures = 0
    for _ in range(50_000):
        data = _clean_base64(rng)
        expected = _outcome(binascii.a2b_base64, data)
        failures += expected == "binascii.Error"
        assert _outcome(lambda d: _decode_clean_base64(d, False), data) == expected, data
        assert _outcome(lambda d: _decode_clean_base64(memoryview(d), False), data) == expected
    assert failures > 1000  # the wrong lengths were tried, not only the well-formed


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_a_large_attachment_decodes_to_its_bytes(line_end: bytes) -> None:
    payload = os.urandom(300_000)
    encoded = base64.encodebytes(payload).replace(b"\n", line_end)
    assert _base64_text(Message(), memoryview(encoded)) == payload
    assert _base64_body(Message(), encoded) == payload


def test_stray_characters_are_skipped_and_noted_as_before() -> None:
    part = Message()
    assert _base64_body(part, b"QU*JD\r\nRA==\r\n") == b"ABCD"
    assert [type(defect).__name__ for defect in part.defects] == ["InvalidBase64CharactersDefect"]
