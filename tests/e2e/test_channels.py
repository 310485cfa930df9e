"""The separate channel, end to end: a real gateway, a real sink, a real webhook receiver; time
moves by an injectable clock, never by sleeping."""

from __future__ import annotations

import http.server
import json
import re
import threading
from email import message_from_bytes, policy

import pytest

from gateway.notify.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from gateway.store.passwords import verify_password
from tests.support.portal_http import download_once
from tests.support.received import LINK, body_text, links_in, password_in
from tests.support.running import PUBLIC_URL, RunningGateway, corpus_mail, send_corpus

PPAP = "01_outlook_jis_aes256"
SENDER = "somu@city.example.lg.jp"


def subject(data: bytes) -> str:
    return str(message_from_bytes(data, policy=policy.default)["Subject"])


def stored_password_hash(running) -> str:
    (transfer,) = running.db.transfers_since(running.clock().replace(year=2000))
    return transfer.password_hash


def password_key(running) -> bytes:
    """The key of generated-password hashes, as the gateway derives it from its master key."""
    from gateway.store.keys import DOWNLOAD_PASSWORD_KEY, derive_key, load_or_create_master_key

    storage = running.gateway.config.storage
    master = load_or_create_master_key(storage.master_key_file, storage.master_key_from_env)
    return derive_key(master, DOWNLOAD_PASSWORD_KEY)


def test_recipient_email_password_arrives_after_the_delay_without_the_link(sink, start_gateway):
    running = start_gateway({"policy": {"password": "recipient-email", "sender_receipt": False}})
    mail = corpus_mail(PPAP)
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(2)
    running.advance(minutes=4)
    with pytest.raises(TimeoutError):
        sink.wait_for(3, timeout=1.5)  # not before the configured five minutes
    running.advance(minutes=1, seconds=1)
    received = sink.wait_for(4)
    password_mails = [m for m in received if m not in link_mails]
    assert sorted(m.rcpt_tos[0] for m in password_mails) == sorted(mail.rcpt_tos)
    stored_hash = stored_password_hash(running)
    for message in password_mails:
        text = body_text(message.data)
        assert not LINK.search(text) and PUBLIC_URL not in text and "/d/" not in text
        assert verify_password(password_in(text), stored_hash, password_key(running))
        assert "見積書" in subject(message.data)  # names the mail it belongs to
        assert message.data.count(b"Message-ID: <notice-") == 1


def test_sender_email_password_goes_to_the_sender_only(sink, start_gateway):
    running = start_gateway({"policy": {"password": "sender-email", "sender_receipt": False}})
    mail = corpus_mail(PPAP)
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(2)
    for message in link_mails:
        assert "送信者" in body_text(message.data) or "sender" in body_text(message.data).lower()
    running.advance(minutes=2)
    (notice,) = [m for m in sink.wait_for(3) if m not in link_mails]
    assert notice.rcpt_tos == [SENDER]
    text = body_text(notice.data)
    stored = stored_password_hash(running)
    assert stored.startswith("hmac-sha256$"), "a generated password gets the keyed hash"
    assert verify_password(password_in(text), stored, password_key(running))
    assert not verify_password(password_in(text), stored), "useless without the key"
    assert all(r in text for r in mail.rcpt_tos) and not LINK.search(text)


def test_receipt_gives_the_sender_a_working_management_link(sink, start_gateway):
    import urllib.request

    running = start_gateway()
    mail = corpus_mail(PPAP)
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(2)
    running.advance(minutes=2)
    (receipt,) = [m for m in sink.wait_for(3) if m not in link_mails]
    assert receipt.rcpt_tos == [SENDER]
    text = body_text(receipt.data)
    assert all(r in text for r in mail.rcpt_tos)
    (manage_token,) = re.findall(re.escape(PUBLIC_URL) + r"/m/([A-Za-z0-9_-]+)", text)
    assert manage_token not in {t for m in link_mails for t in links_in(m.data)}
    url = f"http://127.0.0.1:{running.gateway.portal_port}/m/{manage_token}"
    with urllib.request.urlopen(url, timeout=10) as page:
        html = page.read().decode()
    assert all(r in html for r in mail.rcpt_tos)


class WebhookReceiver(http.server.ThreadingHTTPServer):
    """A real local HTTP endpoint, as an SMS gateway would run it."""

    def __init__(self, secret: bytes):
        self.secret, self.calls = secret, []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                good = verify_signature(receiver.secret, self.headers[TIMESTAMP_HEADER], body,
                                        self.headers[SIGNATURE_HEADER])
                receiver.calls.append((good, json.loads(body)))
                self.send_response(200 if good else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_webhook_channel_posts_a_signed_password(tmp_path, sink, start_gateway):
    secret = b"webhook-secret-0123456789abcdef"
    (tmp_path / "hook.key").write_bytes(secret)
    receiver = WebhookReceiver(secret)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        running = start_gateway({
            "policy": {"password": "webhook", "sender_receipt": False},
            "webhook": {"url": f"http://127.0.0.1:{receiver.server_port}/sms",
                        "secret_file": str(tmp_path / "hook.key")},
        })
        mail = corpus_mail(PPAP)
        assert send_corpus(running.port, mail)[0] == 250
        sink.wait_for(2)
        running.advance(seconds=1)
        deadline = 100
        while len(receiver.calls) < 2 and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert [good for good, _ in receiver.calls] == [True, True]
    bodies = [body for _, body in receiver.calls]
    assert sorted(b["recipient"] for b in bodies) == sorted(mail.rcpt_tos)
    key = password_key(running)
    assert all(verify_password(b["password"], stored_password_hash(running), key) for b in bodies)
    assert len(sink.messages) == 2, "nothing else went by mail"


def test_pending_notices_survive_a_restart(tmp_path, sink, start_gateway):
    running = start_gateway({"policy": {"password": "recipient-email", "sender_receipt": False}})
    assert send_corpus(running.port, corpus_mail(PPAP))[0] == 250
    sink.wait_for(2)
    running.stop()  # the password mails are still waiting for their delay
    again = RunningGateway(running.gateway.config, running.clock).start()
    try:
        again.advance(minutes=6)
        assert len(sink.wait_for(4)) == 4
    finally:
        again.stop()


@pytest.mark.parametrize("mode, notices", [("first-download", 1), ("every-download", 2),
                                           ("never", 0)])
def test_sender_hears_of_downloads_as_the_policy_says(mode, notices, sink, start_gateway):
    running = start_gateway({"policy": {"notify_sender": mode, "sender_receipt": False}})
    mail = corpus_mail(PPAP)
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(2)
    token = next(iter(links_in(link_mails[0].data)))
    for _ in range(2):
        assert len(download_once(running, token)) == mail.side["attachments"][0]["size"]
    running.advance(seconds=1)
    expected = 2 + notices
    received = sink.wait_for(expected) if notices else sink.messages
    with pytest.raises(TimeoutError):
        sink.wait_for(expected + 1, timeout=1.0)
    sent_notices = [m for m in received if m not in link_mails]
    assert len(sent_notices) == notices
    for notice in sent_notices:
        assert notice.rcpt_tos == [SENDER]
        assert link_mails[0].rcpt_tos[0] in body_text(notice.data)
