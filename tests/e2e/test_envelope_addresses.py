"""Envelope addresses at the edges: recipients a next hop could route elsewhere count as external,
and the null sender (`MAIL FROM:<>`: bounces, delivery reports, auto-replies) is relayed as one,
with nothing ever sent back to it."""

from __future__ import annotations

import threading
from dataclasses import replace
from email import message_from_bytes

from gateway.store.outbox import OutboxStore
from tests.support.handmade import AES_ZIP, TEXT, ZIP_HEADERS, b64, mixed
from tests.support.portal_http import Portal
from tests.support.raw_sink import RawClient, RawSink
from tests.support.received import body_text, links_in, password_in
from tests.support.running import Corpus, corpus_mail, send, send_corpus
from tests.support.store_rows import transfer_rows

SENDER = "somu@city.example.lg.jp"
EXTERNAL = "tanaka@partner.example.com"
PERCENT_HACK = "tanaka%partner.example.com@city.example.lg.jp"
QUOTED_AT = '"tanaka@partner.example.com"@city.example.lg.jp'
PLAIN_INTERNAL = "kacho@city.example.lg.jp"
PPAP = mixed(TEXT, ZIP_HEADERS, b64(AES_ZIP))


def assert_converted(data: bytes) -> None:
    """No ZIP bytes in any decoded part, and one download link."""
    assert len(links_in(data)) == 1
    assert b"PK\x03\x04" not in b"".join(
        (part.get_payload(decode=True) or b"") for part in message_from_bytes(data).walk()
        if not part.is_multipart()
    )


def from_null_sender(mail: Corpus) -> Corpus:
    return replace(mail, side={**mail.side, "envelope": {**mail.side["envelope"], "mail_from": "<>"}})


def outbox_states(running) -> dict[str, str]:
    return {item.kind: item.state for item in OutboxStore(running.db).items()}


def test_recipients_that_could_be_rerouted_get_the_link_and_a_plain_internal_one_the_original(
    sink, start_gateway
):
    running = start_gateway()
    assert send(running.port, SENDER, [PERCENT_HACK, QUOTED_AT, PLAIN_INTERNAL], PPAP)[0] == 250
    received = sink.wait_for(3)
    (original,) = [m for m in received if m.rcpt_tos == [PLAIN_INTERNAL]]
    assert original.data == PPAP
    converted = [m for m in received if m is not original]
    assert sorted(m.rcpt_tos[0] for m in converted) == sorted([PERCENT_HACK, QUOTED_AT])
    for message in converted:
        assert_converted(message.data)
    tokens = [links_in(m.data) for m in converted]
    assert tokens[0] != tokens[1], "each re-routable recipient gets a link of its own"


def test_a_source_route_is_dropped_and_never_relayed(start_gateway):
    """aiosmtpd drops `@a,@b:` (RFC 5321 App. C): the address judged is the address relayed."""
    with RawSink() as raw:
        running = start_gateway(next_hop_url=f"smtp://127.0.0.1:{raw.port}")
        with RawClient(running.port) as client:
            client.reply()
            assert client.command(b"EHLO client.test")[0] == 250
            assert client.command(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
            route = f"RCPT TO:<@partner.example.com,@relay.example.net:{PLAIN_INTERNAL}>"
            assert client.command(route.encode())[0] == 250
            assert client.command(b"DATA")[0] == 354
            client.send(PPAP + b".\r\n")
            assert client.reply()[0] == 250
        (message,) = raw.wait_for(1)
        assert message.rcpt_tos == (f"RCPT TO:<{PLAIN_INTERNAL}>".encode(),)
        assert message.content() == PPAP, "internal: the original, byte for byte"


def test_null_sender_is_relayed_as_mail_from_empty_path_byte_for_byte(start_gateway):
    data = (b"From: MAILER-DAEMON@city.example.lg.jp\r\nTo: tanaka@partner.example.com\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
            b"\r\nThis is the mail system.\r\n")
    with RawSink() as raw:
        running = start_gateway(next_hop_url=f"smtp://127.0.0.1:{raw.port}")
        assert send(running.port, "<>", [EXTERNAL, PLAIN_INTERNAL], data)[0] == 250
        (message,) = raw.wait_for(1)
        assert message.mail_from == b"MAIL FROM:<>"
        assert message.content() == data


def test_null_sender_ppap_is_converted_and_nothing_is_ever_sent_back_to_it(sink, start_gateway):
    """The policy sends the password to the sender, a receipt and every download notice: for
    `<>` the password goes to the recipient instead, and nothing at all is queued for `<>`."""
    running = start_gateway({"policy": {
        "password": "sender-email", "sender_receipt": True, "notify_sender": "every-download",
    }})
    assert send(running.port, "<>", [EXTERNAL], PPAP)[0] == 250
    (link_mail,) = sink.wait_for(1)
    assert link_mail.mail_from == ""
    assert_converted(link_mail.data)
    (row,) = transfer_rows(running)
    assert (row["sender"], row["password_channel"]) == ("", "recipient-email")
    running.advance(minutes=6)  # past password_delay and the receipt's delay
    (password_mail,) = [m for m in sink.wait_for(2) if m is not link_mail]
    assert password_mail.rcpt_tos == [EXTERNAL] and password_mail.mail_from != ""
    portal, token = Portal(running), next(iter(links_in(link_mail.data)))
    login = portal.post(token, "/password", {"csrf": portal.csrf(token),
                                             "password": password_in(body_text(password_mail.data))})
    cookie = login.headers["Set-Cookie"].split(";", 1)[0]
    assert portal.download(token, Cookie=cookie).body == AES_ZIP
    running.advance(hours=30)  # any download notice, receipt or note would be long due
    threading.Event().wait(0.5)
    assert len(sink.messages) == 2
    assert outbox_states(running) == {"password-recipient": "sent"}


def test_a_failed_password_mail_for_a_null_sender_transfer_gets_no_give_up_note(
    sink, start_gateway
):
    running = start_gateway({"policy": {"password": "sender-email", "sender_receipt": False}})
    assert send(running.port, "<>", [EXTERNAL], PPAP)[0] == 250
    sink.wait_for(1)
    sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=EXTERNAL)
    running.advance(minutes=6)
    for _ in range(100):
        if outbox_states(running).get("password-recipient") == "gave_up":
            break
        threading.Event().wait(0.1)
    running.advance(seconds=1)  # a give-up note would be due now
    threading.Event().wait(0.5)
    assert outbox_states(running) == {"password-recipient": "gave_up"}, "and no give-up-note"
    assert len(sink.messages) == 1


def test_a_null_sender_mail_is_never_taken_for_a_ppap_password_mail(sink, start_gateway):
    """A bounce quoting the password mail must pass: it is no sender's password mail."""
    running = start_gateway({"policy": {"sender_receipt": False}})
    zip_mail, password_mail = corpus_mail("09a_ppap1_outlook_zip"), corpus_mail("09b_ppap1_outlook_password")
    assert send_corpus(running.port, from_null_sender(zip_mail))[0] == 250
    link_mails = sink.wait_for(2)
    running.clock.advance(seconds=62)
    assert send_corpus(running.port, from_null_sender(password_mail))[0] == 250
    (passed,) = [m for m in sink.wait_for(3) if m not in link_mails]
    assert passed.data == password_mail.raw and passed.mail_from == ""
    assert sorted(passed.rcpt_tos) == sorted(password_mail.rcpt_tos)
    assert not [e.kind for e in running.db.events() if e.kind.startswith("unlock.")]
    running.advance(minutes=5)
    assert outbox_states(running) == {}
