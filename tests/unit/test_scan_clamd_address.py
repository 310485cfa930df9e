"""clamd addresses as the configuration gives them (the clamd client against a real clamd and fake
servers: tests/e2e/test_scan_clamd.py)."""

from __future__ import annotations

import pytest

from gateway.scan import parse_clamd_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/clamav/clamd.ctl", "unix:/run/clamav/clamd.ctl"),
        ("/run/clamav/clamd.ctl", "unix:/run/clamav/clamd.ctl"),
        ("clamav.internal:3310", "clamav.internal:3310"),
        ("[::1]:3310", "[::1]:3310"),
    ],
)
def test_clamd_addresses_that_parse(text: str, expected: str) -> None:
    assert str(parse_clamd_address(text)) == expected


@pytest.mark.parametrize(
    "text", ["", "clamd", "unix:relative.sock", "host:0", "host:99999", ":3310", "host:port",
             "unix:/" + "x" * 120],
)
def test_clamd_addresses_that_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_clamd_address(text)
