"""Attachments the gateway stores unencrypted are scanned by a real clamd before anything is
stored: an infected one refuses the message with a 5xx naming the signature; a scanner that
cannot answer defers it (4xx) or, by policy, lets it through unscanned."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

from tests.support.clamav import EICAR, EICAR_SIGNATURE
from tests.support.received import body_text, links_in
from tests.support.running import corpus_mail, send, send_corpus

SENDER, RCPT = "somu@city.example.lg.jp", "tanaka@partner.example.com"
ADMIN = "soc@city.example.lg.jp"
EVERY_ATTACHMENT = {"policy": {"convert": "all-attachments", "sender_receipt": False}}


def mail_with(name: str, data: bytes) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, RCPT, "資料"
    message.set_content("資料をお送りします。\n", charset="utf-8")
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes(policy=SMTP)


def with_scan(address: str, on_error: str = "tempfail") -> dict:
    return {"scan": {"clamd": address},
            "policy": {**EVERY_ATTACHMENT["policy"], "on_scan_error": on_error}}


def test_infected_attachment_refuses_the_message_naming_the_signature(clamd, sink, start_gateway):
    document = with_scan(clamd.address)
    document["scan"]["admin_address"] = ADMIN
    running = start_gateway(document)
    raw = mail_with("invoice.com", EICAR)
    for _ in range(2):  # the sending MTA may retry: still refused, the admin told once
        code, text = send(running.port, SENDER, [RCPT], raw)
        assert code == 554 and "5.7.1" in text and EICAR_SIGNATURE in text and "invoice.com" in text
    assert running.db.query("SELECT COUNT(*) FROM files")[0][0] == 0, "nothing stored"
    events = [e for e in running.db.events() if e.kind == "scan.infected"]
    assert len(events) == 2 and EICAR_SIGNATURE in str(events[0].detail)
    running.advance(seconds=1)
    (note,) = sink.wait_for(1)
    assert note.rcpt_tos == [ADMIN]
    text = body_text(note.data)
    assert EICAR_SIGNATURE in text and "invoice.com" in text and SENDER in text and "資料" in text
    assert [m.rcpt_tos for m in sink.messages] == [[ADMIN]], "nothing reached the recipient"


def test_japanese_name_stays_out_of_the_reply_text(clamd, sink, start_gateway):
    running = start_gateway(with_scan(clamd.address))
    code, text = send(running.port, SENDER, [RCPT], mail_with("請求書.com", EICAR))
    assert code == 554 and text.isascii() and "attachment 1" in text


def test_clean_attachment_is_stored_and_linked(clamd, sink, start_gateway):
    running = start_gateway(with_scan(clamd.address))
    assert send(running.port, SENDER, [RCPT], mail_with("report.txt", b"quarterly report"))[0] == 250
    (relayed,) = sink.wait_for(1)
    assert links_in(relayed.data)


def test_encrypted_zip_is_not_refused_before_its_password_is_known(clamd, sink, start_gateway):
    running = start_gateway(with_scan(clamd.address))
    mail = corpus_mail("27_eicar_in_encrypted_zip")
    assert send_corpus(running.port, mail)[0] == 250


def test_scanner_down_defers_or_allows_by_policy(tmp_path, sink, start_gateway):
    down = f"unix:{tmp_path}/no-clamd.sock"
    deferring = start_gateway(with_scan(down))
    code, text = send(deferring.port, SENDER, [RCPT], mail_with("report.txt", b"report"))
    assert code == 451 and "4.7.0" in text
    allowing = start_gateway(with_scan(down, on_error="allow"))
    assert send(allowing.port, SENDER, [RCPT], mail_with("report.txt", b"report"))[0] == 250
    assert links_in(sink.wait_for(1)[0].data)
