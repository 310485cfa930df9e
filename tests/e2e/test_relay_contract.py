"""The content-filter contract: 250 only once the next hop took everything; trouble means 4xx;
files of a failed delivery are never reachable; a retry reaches only the recipients not yet served."""

from __future__ import annotations

import logging
import time
from email import message_from_bytes
from email import policy as email_policy

import pytest

from tests.support.processes import free_port
from tests.support.running import corpus_mail, send, send_and_leave, send_corpus
from tests.support.store_rows import link_states, transfer_rows

PPAP = "01_outlook_jis_aes256"


def blob_count(running) -> int:
    return sum(1 for _ in running.gateway.blobs.iter_blob_ids())


def test_next_hop_down_gives_451_and_nothing_reachable(start_gateway):
    running = start_gateway(next_hop_url=f"smtp://127.0.0.1:{free_port()}")
    mail = corpus_mail(PPAP)
    code, text = send_corpus(running.port, mail)
    assert code == 451, text
    assert text.startswith("4.")
    # Every external recipient's link was made, and failed: `all()` over the states alone
    # would also hold if no link had been recorded at all.
    assert link_states(running) == {recipient: ["failed"] for recipient in mail.rcpt_tos}
    assert blob_count(running) == 0


def test_next_hop_temporary_refusals_give_451(sink, start_gateway):
    running = start_gateway()
    for stage, code in (("MAIL", 421), ("RCPT", 451), ("DATA", 451)):
        sink.clear()
        sink.fail_next(stage, code, "4.3.2 try later")
        reply, text = send_corpus(running.port, corpus_mail("13_no_attachment"))
        assert reply == 451, (stage, code, text)


def test_next_hop_permanent_refusal_is_passed_back_as_5xx(sink, start_gateway):
    running = start_gateway()
    sink.fail_next("DATA", 554, "5.7.1 content rejected")
    code, text = send_corpus(running.port, corpus_mail("13_no_attachment"))
    assert code == 554 and "5.7.1" in text


def test_partial_temporary_failure_then_retry_reaches_only_the_rest(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(PPAP)
    first, second = mail.rcpt_tos
    sink.fail_next("RCPT", 451, "4.2.0 mailbox busy", recipient=second)
    code, _ = send_corpus(running.port, mail)
    assert code == 451
    assert [m.rcpt_tos for m in sink.messages] == [[first]]
    states = link_states(running)
    assert states[first] == ["active"] and states[second] == ["failed"]

    code, text = send_corpus(running.port, mail)  # the sending MTA's retry
    assert code == 250, text
    delivered = [m.rcpt_tos[0] for m in sink.wait_for(2)]
    assert sorted(delivered) == sorted([first, second]), "no duplicate, no loss"
    assert sorted(link_states(running)[second]) == ["active", "failed"]
    # the files were stored once and serve both links
    assert blob_count(running) == 1


def test_retry_after_our_lost_250_sends_nothing_twice(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(PPAP)
    assert send_corpus(running.port, mail)[0] == 250
    sink.wait_for(2)
    code, text = send_corpus(running.port, mail)
    assert code == 250 and "already" in text
    assert len(sink.messages) == 2


def test_storage_failure_gives_4xx_and_delivers_nothing(tmp_path, sink, start_gateway):
    running = start_gateway()
    blobs_dir = running.gateway.blobs.root
    if blobs_dir.exists():
        import shutil

        shutil.rmtree(blobs_dir)
    blobs_dir.write_text("not a directory")  # every blob write now fails with an OSError
    code, text = send_corpus(running.port, corpus_mail(PPAP))
    assert code in (451, 452), text
    assert sink.messages == []


def test_relay_refused_for_clients_outside_allowed_networks(sink, start_gateway):
    running = start_gateway({"smtp": {"allowed_clients": ["192.0.2.0/24"]}})
    mail = corpus_mail("13_no_attachment")
    code, text = send(running.port, mail.mail_from, mail.rcpt_tos, mail.raw)
    assert code == 554 and "5.7.1" in text
    assert sink.messages == []


def test_size_and_recipient_limits(sink, start_gateway):
    running = start_gateway({"smtp": {"max_message_size": "20KiB", "max_recipients": 2}})
    big = corpus_mail("29_plain_pdf")  # 22 KB
    code, text = send(running.port, big.mail_from, big.rcpt_tos, big.raw)
    assert code == 552 and "5.3.4" in text
    code, text = send(running.port, "a@city.example.lg.jp",
                      ["x@p.example.com", "y@p.example.com", "z@p.example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert code == 452 and "4.5.3" in text
    assert sink.messages == []


def test_ehlo_offers_8bitmime_smtputf8_size_and_no_auth_without_tls(start_gateway):
    import smtplib

    running = start_gateway()
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        assert client.has_extn("size")
        assert not client.has_extn("starttls") and not client.has_extn("auth")


def test_starttls_offered_when_a_certificate_is_configured(tmp_path, start_gateway):
    import smtplib
    import ssl

    from tests.support.tls import write_self_signed

    cert, key = write_self_signed(tmp_path)
    running = start_gateway({"smtp": {"tls_cert": str(cert), "tls_key": str(key)}})
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        client.starttls(context=context)
        client.ehlo("client.test")
        assert client.sock.version() is not None


# -- a client that leaves after its final dot --------------------------------------------------


def message_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "gateway.message"]


def wait_for_message_lines(caplog, count: int, timeout: float = 10.0) -> list[str]:
    """The one-per-message log lines, once `count` have been written (or the time is up)."""
    deadline = time.monotonic() + timeout
    while len(message_lines(caplog)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return message_lines(caplog)


@pytest.mark.parametrize("half_close", [False, True], ids=["hang-up", "half-close"])
def test_client_gone_after_the_final_dot_the_relay_finishes_records_and_logs(
    half_close, sink, start_gateway, caplog
):
    caplog.set_level(logging.INFO)
    running = start_gateway()
    mail = corpus_mail(PPAP)
    # The next hop takes the first copy at once but is slow to say so; the client leaves
    # meanwhile (its own timeout, say), before the gateway could record the copy.
    sink.hold_reply_next(1.0)
    send_and_leave(running.port, mail.mail_from, mail.rcpt_tos, mail.raw, half_close=half_close,
                   leave_when=lambda: sink.wait_for(1))
    lines = wait_for_message_lines(caplog, 1)

    code, text = send_corpus(running.port, mail)  # the client's retry
    time.sleep(0.5)  # anything sent twice would have arrived by now
    copies = sorted(rcpt for message in sink.messages for rcpt in message.rcpt_tos)
    assert copies == sorted(mail.rcpt_tos), "each recipient exactly one copy"
    assert (code, "already" in text) == (250, True), text
    assert [row["state"] for row in transfer_rows(running)] == ["active"]
    assert link_states(running) == {rcpt: ["active"] for rcpt in mail.rcpt_tos}
    assert len(lines) == 1 and "decision=convert" in lines[0] and "reply=250" in lines[0], lines
    assert "client gone" in lines[0]


def test_a_retry_while_the_first_attempt_still_relays_is_deferred_not_sent_twice(
    sink, start_gateway, caplog
):
    caplog.set_level(logging.INFO)
    running = start_gateway()
    mail = corpus_mail(PPAP)
    sink.hold_reply_next(1.5)
    send_and_leave(running.port, mail.mail_from, mail.rcpt_tos, mail.raw,
                   leave_when=lambda: sink.wait_for(1))
    code, text = send_corpus(running.port, mail)  # at once: the first attempt is still relaying
    assert code == 451 and text.startswith("4."), text
    assert len(wait_for_message_lines(caplog, 2)) == 2

    code, text = send_corpus(running.port, mail)  # later
    assert (code, "already" in text) == (250, True), text
    copies = sorted(rcpt for message in sink.messages for rcpt in message.rcpt_tos)
    assert copies == sorted(mail.rcpt_tos)


# -- a copy refused for good while others were taken -----------------------------------------


def reports_in(messages) -> list:
    """The delivery status notifications among what the sink got, parsed as a mail client does."""
    parsed = [(m, message_from_bytes(m.data, policy=email_policy.default)) for m in messages]
    return [(m, report) for m, report in parsed if report.get_content_type() == "multipart/report"]


def test_one_recipient_refused_for_good_is_a_250_and_one_dsn_naming_only_that_recipient(
    sink, start_gateway
):
    running = start_gateway({"policy": {"locale": "en"}})
    mail = corpus_mail(PPAP)
    taken, refused = mail.rcpt_tos
    sink.fail_next("RCPT", 550, "5.1.1 <eigyo@partner.example.com>: no such user",
                   recipient=refused)
    code, text = send_corpus(running.port, mail)
    assert code == 250, text
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [[taken]]

    running.advance(minutes=5)  # receipts and reports are due by now
    time.sleep(1.5)
    [(dsn, report)] = reports_in(sink.messages)
    assert (dsn.mail_from, dsn.rcpt_tos) == ("", [mail.mail_from])  # MAIL FROM:<> (RFC 5321)
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied" and report["Message-ID"]
    human, status, headers = report.iter_parts()
    assert human.get_content_type() == "text/plain" and refused in human.get_content()
    assert taken not in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; gw.test" and per_message["Arrival-Date"]
    assert [block["Final-Recipient"] for block in per_recipient] == [f"rfc822; {refused}"]
    [block] = per_recipient
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <eigyo@partner.example.com>: no such user"
    )
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject:" in headers.get_content() and "Content-Type: multipart/mixed" in (
        headers.get_content()
    )

    code, text = send_corpus(running.port, mail)  # our 250 lost: the sending MTA retries
    assert (code, "already" in text) == (250, True), text
    running.advance(minutes=5)
    time.sleep(1.0)
    assert len(reports_in(sink.messages)) == 1, "one report, however often the sender retries"


def test_no_report_ever_goes_to_the_null_sender(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(PPAP)
    taken, refused = mail.rcpt_tos
    sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=refused)
    code, text = send(running.port, "", mail.rcpt_tos, mail.raw)
    assert code == 250, text
    running.advance(minutes=5)
    time.sleep(1.5)
    assert reports_in(sink.messages) == []
    assert all(m.rcpt_tos != [""] for m in sink.messages)


def test_every_copy_refused_for_good_is_still_a_5xx_and_no_report(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(PPAP)
    for recipient in mail.rcpt_tos:
        sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=recipient)
    code, text = send_corpus(running.port, mail)
    assert code == 550 and "5.1.1" in text
    running.advance(minutes=5)
    time.sleep(1.0)
    assert reports_in(sink.messages) == []


def test_a_temporary_refusal_beside_a_permanent_one_is_still_a_4xx(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(PPAP)
    taken, other = mail.rcpt_tos
    sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=taken)
    sink.fail_next("RCPT", 451, "4.2.0 mailbox busy", recipient=other)
    code, text = send_corpus(running.port, mail)
    assert code == 451 and "4.2.0" in text
