"""Delivery to the outbox directory, next-hop URLs, and line ends made CRLF (SMTP delivery against a
real recording sink on a socket: tests/e2e/test_deliver_smtp.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.folder import FolderNextHop
from gateway.outbound.next_hops import make_next_hop, parse_next_hop_url
from gateway.outbound.smtp import SmtpNextHop
from gateway.wire import crlf_line_endings
from tests.support.delivery import corpus_message, simple_message


# -- outbox -----------------------------------------------------------------------------------

QUEUED_AT = dt.datetime(2026, 4, 1, 9, 30, 15, 123456, tzinfo=dt.timezone.utc)


def outbox_deliver(outbox: FolderNextHop, message: OutgoingMessage) -> DeliveryResult:
    return asyncio.run(outbox.deliver(message))


class CountingFsync:
    """os.fsync that counts its calls and fails on call number `fail_on` (0: never)."""

    def __init__(self, fail_on: int = 0) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, descriptor: int) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise OSError(errno.EIO, "simulated fsync failure")
        os.fsync(descriptor)


def test_outbox_writes_eml_and_json_sidecar_durably(tmp_path: Path) -> None:
    fsync = CountingFsync()
    outbox = FolderNextHop(tmp_path, fsync=fsync, clock=lambda: QUEUED_AT)
    message = corpus_message("12_mixed_recipients")
    result = outbox_deliver(outbox, message)
    assert result.accepted and result.code == 250
    [eml] = tmp_path.glob("*.eml")
    assert sorted(path.name for path in tmp_path.iterdir()) == [eml.name, eml.stem + ".json"]
    assert eml.name.startswith("20260401T093015123456Z-") and eml.stem in result.message
    assert eml.read_bytes() == message.data
    assert json.loads(eml.with_suffix(".json").read_text("ascii")) == {
        "mail_from": message.mail_from,
        "rcpt_tos": list(message.rcpt_tos),
        "queued_at": "2026-04-01T09:30:15.123456+00:00",
    }
    assert fsync.calls == 4  # each file, and the directory after each rename


def test_outbox_names_are_unique_for_the_same_instant(tmp_path: Path) -> None:
    outbox = FolderNextHop(tmp_path, clock=lambda: QUEUED_AT)
    for _ in range(3):
        assert outbox_deliver(outbox, simple_message()).accepted
    assert len(list(tmp_path.glob("*.eml"))) == 3


@pytest.mark.parametrize("fail_on", [1, 2, 3, 4])
def test_outbox_fsync_failure_is_temporary_and_leaves_nothing(tmp_path: Path, fail_on: int) -> None:
    fsync = CountingFsync(fail_on)
    result = outbox_deliver(FolderNextHop(tmp_path, fsync=fsync), simple_message())
    assert fsync.calls == fail_on
    assert result == DeliveryResult(False, 451, "4.3.0 outbox write failed")
    assert list(tmp_path.iterdir()) == []


def test_outbox_creates_its_directory_on_first_use(tmp_path: Path) -> None:
    outbox = FolderNextHop(tmp_path / "spool" / "outbox")
    assert outbox_deliver(outbox, simple_message()).accepted
    [eml] = (tmp_path / "spool" / "outbox").glob("*.eml")
    assert eml.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "spool" / "outbox").stat().st_mode & 0o777 == 0o700


def test_outbox_that_cannot_be_written_is_temporary_and_fails_check(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_bytes(b"")
    outbox = FolderNextHop(tmp_path / "not-a-directory" / "outbox")
    assert outbox_deliver(outbox, simple_message()) == DeliveryResult(False, 451, "4.3.0 outbox write failed")
    assert asyncio.run(outbox.check()) is False
    assert asyncio.run(FolderNextHop(tmp_path).check()) is True
    assert [path.name for path in tmp_path.iterdir()] == ["not-a-directory"]  # probe cleaned up


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("smtp://relay.example.net", ("smtp", "relay.example.net", "25")),
        ("smtp://relay.example.net:2525", ("smtp", "relay.example.net", "2525")),
        ("smtp://mail_relay:25/", ("smtp", "mail_relay", "25")),
        ("SMTP://10.0.0.5:587", ("smtp", "10.0.0.5", "587")),
        ("smtp://[::1]:2525", ("smtp", "::1", "2525")),
        ("smtp://[2001:DB8::25]", ("smtp", "2001:db8::25", "25")),
        ("outbox:/var/spool/ppap-gateway/outbox", ("outbox", "/var/spool/ppap-gateway/outbox")),
        ("outbox:var/outbox", ("outbox", "var/outbox")),
        ("outbox:/srv/mail outbox", ("outbox", "/srv/mail outbox")),
    ],
)
def test_parse_next_hop_url_accepts(url: str, parsed: tuple[str, ...]) -> None:
    assert parse_next_hop_url(url) == parsed


@pytest.mark.parametrize(
    "url",
    [
        "",
        "relay.example.net:25",
        "smtps://relay.example.net",
        "http://relay.example.net",
        "smtp://",
        "smtp://relay:0",
        "smtp://relay:65536",
        "smtp://relay:smtp",
        "smtp://relay:",
        "smtp://user@relay",
        "smtp://relay/path",
        "smtp://relay?x=1",
        "smtp://[::1",
        "smtp://[::g]:25",
        "smtp://::1:25",
        "smtp://999.1.1.1",
        "smtp://-relay-.example",
        "smtp://relay..example",
        "smtp://relay:25\nX",
        "smtp://re lay",
        "outbox:",
        "outbox:/srv/outbox\n",
        " smtp://relay",
    ],
)
def test_parse_next_hop_url_rejects_with_one_line_message(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_next_hop_url(url)
    assert "\n" not in str(raised.value) and "next hop URL" in str(raised.value)


def test_make_next_hop_builds_the_hop_the_url_names(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"starttls": "required", "timeout": 5.0, "helo_name": "gw.example"}
    smtp = make_next_hop("smtp://[::1]:2525", **settings)
    assert isinstance(smtp, SmtpNextHop) and (smtp.host, smtp.port) == ("::1", 2525)
    assert smtp.describe() == "smtp://[::1]:2525 (starttls required)"
    outbox = make_next_hop(f"outbox:{tmp_path}", **settings)
    assert isinstance(outbox, FolderNextHop) and outbox.path == tmp_path
    with pytest.raises(ValueError):
        make_next_hop("smtp://relay", **{**settings, "starttls": "sometimes"})
    with pytest.raises(ValueError):
        make_next_hop("smtp://relay", **{**settings, "helo_name": "gw example"})


# -- the bytes on the wire: CRLF only, dot-stuffed (SMTP smuggling, outbound) --------------------


def test_crlf_line_endings_makes_every_bare_cr_and_lf_a_crlf() -> None:
    assert crlf_line_endings(b"a\nb\rc\r\nd\r\re\n\nf") == b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\nf"
    assert crlf_line_endings(b"clean\r\n") == b"clean\r\n"


def test_crs_before_an_lf_are_one_line_end_not_an_empty_line() -> None:
    """A CRLF file sent by a client that adds its own CR must keep its header intact."""
    sent = b"From: a@b.example\r\r\nSubject: x\r\r\n\r\r\nbody\r\r\n"
    assert crlf_line_endings(sent) == b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\n"
