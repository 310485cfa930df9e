"""The content-filter contract: 250 only once the next hop took everything; trouble means 4xx;
files of a failed delivery are never reachable; a retry reaches only the recipients not yet served."""

from __future__ import annotations

from tests.support.processes import free_port
from tests.support.running import corpus_mail, send, send_corpus
from tests.support.store_rows import link_states

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
