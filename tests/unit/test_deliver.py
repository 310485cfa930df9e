"""Delivery to the next hop: SMTP against a real recording sink on a socket, and the outbox directory."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.folder import FolderNextHop
from gateway.outbound.next_hops import make_next_hop, parse_next_hop_url
from gateway.outbound.smtp import SmtpNextHop
from gateway.wire import crlf_line_endings
from tests.support.raw_sink import RawSink
from tests.support.sink import RecordingSink
from tests.support.tls import write_self_signed

CORPUS = Path(__file__).parents[1] / "corpus" / "mail"
SENDER = "kikaku@city.example.lg.jp"
ALICE = "alice@vendor.example.net"
BOB = "bob@partner.example.com"
T = TypeVar("T")


def corpus_message(name: str, **flags: bool) -> OutgoingMessage:
    envelope = json.loads((CORPUS / f"{name}.json").read_text("utf-8"))["envelope"]
    data = (CORPUS / f"{name}.eml").read_bytes()
    return OutgoingMessage(envelope["mail_from"], tuple(envelope["rcpt_to"]), data, **flags)


def simple_message(*recipients: str, **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "mail_from": SENDER,
        "rcpt_tos": recipients or (ALICE,),
        "data": b"Subject: hello\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def smtp_hop(port: int, **overrides: Any) -> SmtpNextHop:
    settings: dict[str, Any] = {"starttls": "off", "timeout": 2.0, "helo_name": "gateway.test"}
    settings.update(overrides)
    return SmtpNextHop("127.0.0.1", port, **settings)


def run(hop: SmtpNextHop, steps: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a test's coroutine on a fresh loop, always closing the hop's pooled connections."""

    async def main() -> T:
        try:
            return await steps()
        finally:
            await hop.close()

    return asyncio.run(main())


def deliver_all(hop: SmtpNextHop, *messages: OutgoingMessage) -> list[DeliveryResult]:
    async def steps() -> list[DeliveryResult]:
        return [await hop.deliver(message) for message in messages]

    return run(hop, steps)


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as running:
        yield running


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: connecting is refused, and nobody else can take the port meanwhile.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# -- plain delivery ---------------------------------------------------------------------------


def test_delivers_corpus_message_byte_exact_including_dot_lines(sink: RecordingSink) -> None:
    message = corpus_message("13_no_attachment")
    assert b"\r\n." in message.data  # the corpus mail has a line starting with "."
    [result] = deliver_all(smtp_hop(sink.port), message)
    assert result == DeliveryResult(True, 250, "2.0.0 queued")
    [received] = sink.messages
    assert received.data == message.data
    assert (received.mail_from, received.rcpt_tos) == (message.mail_from, list(message.rcpt_tos))
    assert received.mail_options == []


def test_lines_made_of_dots_survive_the_dot_stuffing_round_trip(sink: RecordingSink) -> None:
    message = simple_message()
    [result] = deliver_all(smtp_hop(sink.port), message)
    assert result.accepted
    assert sink.messages[0].data == message.data


def test_8bit_body_goes_with_body_8bitmime(sink: RecordingSink) -> None:
    message = corpus_message("02_thunderbird_rfc2231_longname", body_8bit=True)
    [result] = deliver_all(smtp_hop(sink.port), message)
    assert result.accepted
    assert sink.messages[0].mail_options == ["BODY=8BITMIME"]
    assert sink.messages[0].data == message.data


def test_smtputf8_message_goes_with_smtputf8_and_utf8_addresses(sink: RecordingSink) -> None:
    message = simple_message("田中@取引先.example", mail_from="企画課@city.example.lg.jp", smtputf8=True)
    [result] = deliver_all(smtp_hop(sink.port), message)
    assert result.accepted
    [received] = sink.messages
    assert received.mail_options == ["SMTPUTF8"]
    assert (received.mail_from, received.rcpt_tos) == ("企画課@city.example.lg.jp", ["田中@取引先.example"])


@pytest.mark.parametrize("smtputf8_flag", [True, False])
def test_utf8_message_to_hop_without_smtputf8_is_permanent_553(smtputf8_flag: bool) -> None:
    message = simple_message("田中@取引先.example", smtputf8=smtputf8_flag)
    with RecordingSink(smtputf8=False) as plain_sink:
        [result] = deliver_all(smtp_hop(plain_sink.port), message)
        assert result == DeliveryResult(False, 553, "5.6.7 next hop lacks SMTPUTF8")
        assert result.permanent and plain_sink.messages == []


# -- connection pool --------------------------------------------------------------------------


def test_two_messages_share_one_connection(sink: RecordingSink) -> None:
    results = deliver_all(smtp_hop(sink.port), simple_message(), simple_message(BOB))
    assert [result.accepted for result in results] == [True, True]
    assert sink.connections == 1
    assert [received.rcpt_tos for received in sink.messages] == [[ALICE], [BOB]]


def test_reused_connection_is_reset_after_a_refused_transaction(sink: RecordingSink) -> None:
    # Without RSET the server would still hold the first MAIL FROM and answer 503 to the next.
    sink.fail_next("RCPT", 550, "5.1.1 no such user")
    refused, accepted = deliver_all(smtp_hop(sink.port), simple_message(), simple_message())
    assert refused.permanent and accepted.accepted
    assert sink.connections == 1 and len(sink.messages) == 1


def test_stale_pooled_connection_is_replaced_after_next_hop_restart(sink: RecordingSink) -> None:
    hop = smtp_hop(sink.port)

    async def steps() -> tuple[DeliveryResult, DeliveryResult]:
        before = await hop.deliver(simple_message())
        sink.stop()  # drops the pooled connection; this loop is blocked and does not notice yet
        sink.start()
        return before, await hop.deliver(simple_message(BOB))

    before, after = run(hop, steps)
    assert before.accepted and after.accepted
    assert sink.connections == 1  # one fresh connection since the restart
    assert sink.messages[-1].rcpt_tos == [BOB]


def test_pool_keeps_at_most_pool_size_idle_connections_and_close_ends_them(
    sink: RecordingSink,
) -> None:
    hop = smtp_hop(sink.port, pool_size=1)

    async def steps() -> tuple[list[DeliveryResult], bool, bool]:
        results = await asyncio.gather(*(hop.deliver(simple_message()) for _ in range(3)))
        one_idle = await eventually(lambda: sink.open_connections == 1)
        await hop.close()
        none_open = await eventually(lambda: sink.open_connections == 0)
        return list(results), one_idle, none_open

    results, one_idle, none_open = run(hop, steps)
    assert all(result.accepted for result in results)
    assert sink.connections == 3
    assert one_idle and none_open


def test_sink_wait_for_blocks_until_a_message_from_another_thread_arrives(
    sink: RecordingSink,
) -> None:
    with pytest.raises(TimeoutError):
        sink.wait_for(1, timeout=0.05)
    sender = threading.Thread(target=deliver_all, args=(smtp_hop(sink.port), simple_message()))
    sender.start()
    try:
        assert [received.rcpt_tos for received in sink.wait_for(1, timeout=5)] == [[ALICE]]
    finally:
        sender.join()
    sink.clear()
    assert sink.messages == []


def test_check_reports_a_reachable_next_hop(sink: RecordingSink, closed_port: int) -> None:
    reachable, unreachable = smtp_hop(sink.port), smtp_hop(closed_port)
    assert run(reachable, reachable.check) is True
    assert run(unreachable, unreachable.check) is False


# -- failures of the next hop ------------------------------------------------------------------


def test_refused_connection_is_temporary_451_4_4_1(closed_port: int) -> None:
    [result] = deliver_all(smtp_hop(closed_port), simple_message())
    assert result == DeliveryResult(False, 451, "4.4.1 next hop unreachable")
    assert result.temporary


def test_unresolvable_host_is_temporary_451_4_4_1() -> None:
    hop = SmtpNextHop("no-such-host.invalid", 25, starttls="off", timeout=2.0, helo_name="gw.test")
    [result] = deliver_all(hop, simple_message())
    assert result == DeliveryResult(False, 451, "4.4.1 next hop unreachable")


@pytest.mark.parametrize("code", [421, 451])
def test_temporary_refusal_at_rcpt_is_temporary(sink: RecordingSink, code: int) -> None:
    sink.fail_next("RCPT", code, "4.3.2 try again later")
    [result] = deliver_all(smtp_hop(sink.port), simple_message())
    assert result.temporary and result.code == 451
    assert sink.messages == []


def test_421_drops_the_connection_and_the_next_message_opens_a_new_one(sink: RecordingSink) -> None:
    sink.fail_next("MAIL", 421, "4.3.2 shutting down")
    first, second = deliver_all(smtp_hop(sink.port), simple_message(), simple_message())
    assert first == DeliveryResult(False, 451, "4.4.2 next hop is closing the connection")
    assert second.accepted and sink.connections == 2


def test_one_refused_recipient_of_two_still_delivers_to_the_other(sink: RecordingSink) -> None:
    sink.fail_next("RCPT", 550, "5.1.1 <bob@partner.example.com>: no such user", recipient=BOB)
    [result] = deliver_all(smtp_hop(sink.port), simple_message(ALICE, BOB))
    assert result.accepted and result.code == 250
    assert result.rejected_recipients == {BOB: (550, "5.1.1 <bob@partner.example.com>: no such user")}
    assert sink.messages[0].rcpt_tos == [ALICE]


def test_all_recipients_refused_permanently_is_permanent(sink: RecordingSink) -> None:
    sink.fail_next("RCPT", 550, "5.1.1 no such user", count=2)
    [result] = deliver_all(smtp_hop(sink.port), simple_message(ALICE, BOB))
    assert result.permanent and result.code == 550
    assert set(result.rejected_recipients) == {ALICE, BOB}
    assert sink.messages == []


def test_mixed_refusals_prefer_the_temporary_code(sink: RecordingSink) -> None:
    sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=ALICE)
    sink.fail_next("RCPT", 450, "4.2.1 mailbox busy", recipient=BOB)
    [result] = deliver_all(smtp_hop(sink.port), simple_message(ALICE, BOB))
    assert result == DeliveryResult(
        False, 450, "4.2.1 mailbox busy", {ALICE: (550, "5.1.1 no such user"), BOB: (450, "4.2.1 mailbox busy")}
    )


def test_refused_sender_returns_the_next_hops_code(sink: RecordingSink) -> None:
    sink.fail_next("MAIL", 553, "5.7.1 sender not allowed")
    [result] = deliver_all(smtp_hop(sink.port), simple_message())
    assert result == DeliveryResult(False, 553, "5.7.1 sender not allowed")


def test_554_at_data_is_permanent(sink: RecordingSink) -> None:
    sink.fail_next("DATA", 554, "5.7.1 content rejected")
    [result] = deliver_all(smtp_hop(sink.port), simple_message())
    assert result == DeliveryResult(False, 554, "5.7.1 content rejected")
    assert result.permanent and sink.messages == []


def test_next_hop_reply_text_is_passed_on_as_one_printable_line(sink: RecordingSink) -> None:
    sink.fail_next("DATA", 550, "5.7.1 bad\tcontent \x01 here")
    [result] = deliver_all(smtp_hop(sink.port), simple_message())
    assert result.message == "5.7.1 bad content ? here"


def test_slow_data_reply_times_out_as_451_within_about_the_timeout(sink: RecordingSink) -> None:
    sink.delay_next("DATA", 5.0)
    started = time.monotonic()
    [result] = deliver_all(smtp_hop(sink.port, timeout=0.5), simple_message())
    assert time.monotonic() - started < 4.5  # gave up before the sink answered
    assert result == DeliveryResult(False, 451, "4.4.2 next hop timed out")


def test_connection_dropped_at_data_is_temporary_and_not_reused(sink: RecordingSink) -> None:
    sink.close_next()
    dropped, retried = deliver_all(smtp_hop(sink.port), simple_message(), simple_message())
    assert dropped == DeliveryResult(False, 451, "4.4.2 connection to next hop lost")
    assert retried.accepted and sink.connections == 2 and len(sink.messages) == 1


def test_recipient_that_cannot_travel_on_a_command_line_is_refused_locally(
    sink: RecordingSink,
) -> None:
    evil = "x@y.example>\r\nRCPT TO:<victim@z.example"
    [result] = deliver_all(smtp_hop(sink.port), simple_message(ALICE, evil))
    assert result.accepted
    assert result.rejected_recipients == {evil: (553, "5.1.3 recipient address cannot be relayed")}
    assert sink.messages[0].rcpt_tos == [ALICE]


def test_sender_that_cannot_travel_on_a_command_line_is_permanent(sink: RecordingSink) -> None:
    [result] = deliver_all(smtp_hop(sink.port), simple_message(mail_from="a@b.example\r\nRSET"))
    assert result.permanent and result.code == 553
    assert sink.connections == 0


def test_null_sender_is_sent_as_empty_path(sink: RecordingSink) -> None:
    [result] = deliver_all(smtp_hop(sink.port), simple_message(mail_from=""))
    assert result.accepted and sink.messages[0].mail_from == ""


# -- STARTTLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file)."""
    return write_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_sink(certificate: tuple[Path, Path]) -> Iterator[RecordingSink]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate[0], certificate[1])
    with RecordingSink(tls_context=server_context) as running:
        yield running


@pytest.fixture
def trusting_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificate[0])


def test_starttls_required_but_not_offered_is_451_4_7_0(sink: RecordingSink) -> None:
    hop = smtp_hop(sink.port, starttls="required")
    [result] = deliver_all(hop, simple_message())
    assert result == DeliveryResult(False, 451, "4.7.0 next hop offers no STARTTLS")
    assert sink.messages == []
    assert run(hop, hop.check) is False


@pytest.mark.parametrize("mode", ["opportunistic", "required"])
def test_starttls_upgrades_when_the_certificate_is_trusted(
    tls_sink: RecordingSink, trusting_context: ssl.SSLContext, mode: str
) -> None:
    message = corpus_message("02_thunderbird_rfc2231_longname", body_8bit=True)
    hop = smtp_hop(tls_sink.port, starttls=mode, tls_context=trusting_context)
    [result] = deliver_all(hop, message)
    assert result.accepted
    [received] = tls_sink.messages
    assert received.tls and received.data == message.data
    assert received.mail_options == ["BODY=8BITMIME"]  # from the EHLO repeated after STARTTLS


def test_starttls_required_with_untrusted_certificate_is_451_4_7_0(tls_sink: RecordingSink) -> None:
    [result] = deliver_all(smtp_hop(tls_sink.port, starttls="required"), simple_message())
    assert result == DeliveryResult(False, 451, "4.7.0 TLS handshake with next hop failed")
    assert tls_sink.messages == []


def test_starttls_opportunistic_falls_back_to_plaintext_when_handshake_fails(
    tls_sink: RecordingSink,
) -> None:
    [result] = deliver_all(smtp_hop(tls_sink.port, starttls="opportunistic"), simple_message())
    assert result.accepted
    assert tls_sink.messages[0].tls is False and tls_sink.connections == 2


def test_starttls_off_stays_plaintext_even_when_offered(
    tls_sink: RecordingSink, trusting_context: ssl.SSLContext
) -> None:
    hop = smtp_hop(tls_sink.port, starttls="off", tls_context=trusting_context)
    [result] = deliver_all(hop, simple_message())
    assert result.accepted and tls_sink.messages[0].tls is False


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

SLOPPY = (
    b"Subject: sloppy\n\nbare LF\n.\nbare CR\r.\rCR before CRLF\r\r\n"
    b".dot after LF\n\r\n.\r\n..\nMAIL FROM:<evil@attacker.example>\r\n\x00.\r\nlast line without end"
)


def test_crlf_line_endings_makes_every_bare_cr_and_lf_a_crlf() -> None:
    assert crlf_line_endings(b"a\nb\rc\r\nd\r\re\n\nf") == b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\nf"
    assert crlf_line_endings(b"clean\r\n") == b"clean\r\n"


def test_sloppy_line_ends_reach_the_wire_as_crlf_with_every_dot_line_stuffed() -> None:
    with RawSink() as raw:
        (result,) = deliver_all(smtp_hop(raw.port), simple_message(data=SLOPPY))
        (received,) = raw.wait_for(1)
    assert result.accepted
    assert received.bare_line_ends() == []
    assert all(line.startswith(b"..") for line in received.lines() if line.startswith(b"."))
    assert received.content() == crlf_line_endings(SLOPPY) + b"\r\n"
    assert received.wire.count(b"\r\n.\r\n") == 1 and received.wire.endswith(b"\r\n.\r\n")


def test_raw_sink_sees_bare_line_ends_and_unstuffed_dots_a_sloppy_client_sends() -> None:
    """The check above can fail: the raw sink keeps exactly what a client wrote."""
    with RawSink() as raw, socket.create_connection(("127.0.0.1", raw.port), timeout=5) as client:
        client.sendall(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        client.sendall(b"bare\nLF\r\n.dot\r\n.\r\nQUIT\r\n")
        (received,) = raw.wait_for(1)
    assert received.bare_line_ends() == [4]
    assert received.lines() == [b"bare\nLF", b".dot"] and received.content() == b"bare\nLF\r\ndot\r\n"


def test_crs_before_an_lf_are_one_line_end_not_an_empty_line() -> None:
    """A CRLF file sent by a client that adds its own CR must keep its header intact."""
    sent = b"From: a@b.example\r\r\nSubject: x\r\r\n\r\r\nbody\r\r\n"
    assert crlf_line_endings(sent) == b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\n"
