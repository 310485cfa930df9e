"""Delivery to the next hop: SMTP against a real recording sink on a socket (the outbox directory:
tests/unit/test_deliver.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.model import DeliveryResult
from gateway.outbound.smtp import SmtpNextHop
from gateway.wire import crlf_line_endings
from tests.support.delivery import ALICE, corpus_message, deliver_all, run, simple_message, smtp_hop
from tests.support.raw_sink import RawSink
from tests.support.sink import RecordingSink
from tests.support.tls import write_self_signed

BOB = "bob@partner.example.com"


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


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


def test_deliver_answers_before_a_connection_it_retires_has_said_goodbye(
    sink: RecordingSink,
) -> None:
    """The caller records the acceptance the moment deliver() returns; a crash before that
    record sends the message twice, so a slow QUIT must not stand in between."""
    hop = smtp_hop(sink.port, pool_size=0, timeout=10.0)  # every connection is retired
    sink.hold_quit_next(3.0)

    async def steps() -> tuple[DeliveryResult, float, bool]:
        started = time.monotonic()
        result = await hop.deliver(simple_message())
        took = time.monotonic() - started
        await hop.close()  # waits for the goodbye
        return result, took, await eventually(lambda: sink.open_connections == 0)

    result, took, none_open = run(hop, steps)
    assert result.accepted and len(sink.messages) == 1
    assert took < 1.5, f"deliver() waited {took:.1f} s for QUIT"
    assert none_open


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


# -- the bytes on the wire: CRLF only, dot-stuffed (SMTP smuggling, outbound) --------------------

SLOPPY = (
    b"Subject: sloppy\n\nbare LF\n.\nbare CR\r.\rCR before CRLF\r\r\n"
    b".dot after LF\n\r\n.\r\n..\nMAIL FROM:<evil@attacker.example>\r\n\x00.\r\nlast line without end"
)


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
