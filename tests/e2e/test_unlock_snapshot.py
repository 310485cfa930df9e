"""A transfer keeps the policy it was made under: the ZIP mail is converted under one
configuration, the gateway is restarted on the same data with another, and the password mail
(or the sender's unlock form, or the sending MTA's retry) is still treated as the stored policy
says."""

from __future__ import annotations

import html
import sqlite3
from contextlib import contextmanager
from datetime import timedelta

from gateway.sample import build_encrypted_zip as encrypted_zip
from gateway.store.policies import stored_policy
from tests.support.portal_http import manage_token, portal, unlock_form
from tests.support.ppap import SENDER, password_mail, zip_mail
from tests.support.received import body_text, links_in
from tests.support.running import RunningGateway, corpus_mail, make_config, send, send_corpus
from tests.support.store_rows import link_states

PPAP = "01_outlook_jis_aes256"
TANAKA = "tanaka@partner.example.com"

SOMU = {"name": "somu", "senders": [SENDER],
        "policy": {"password_mail": "replace", "sender_receipt": False}}


@contextmanager
def restarted(running, tmp_path, sink, document: dict):
    """The same data directory and clock, another configuration."""
    running.stop()
    config = make_config(tmp_path, f"smtp://127.0.0.1:{sink.port}", document)
    again = RunningGateway(config, running.clock).start()
    try:
        yield again
    finally:
        again.stop()


def convert_one_zip(running, sink, password: str, name: str = "a.zip") -> str:
    """Send one PPAP ZIP to TANAKA; the link's token."""
    data = encrypted_zip({"a.txt": b"contents " * 100}, password)
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], data, name))[0] == 250
    return next(iter(links_in(sink.wait_for(1)[0].data)))


def the_transfer(running):
    (transfer,) = running.db.transfers_since(running.clock() - timedelta(days=1))
    return transfer


def test_password_mail_is_suppressed_as_when_stored_though_the_policy_now_passes(
        tmp_path, sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})  # password_mail = "suppress"
    link = convert_one_zip(running, sink, "snap-pass")
    assert stored_policy(the_transfer(running)).password_mail == "suppress"

    with restarted(running, tmp_path, sink,
                   {"policy": {"sender_receipt": False, "password_mail": "pass"}}) as again:
        again.clock.advance(minutes=1)
        raw = password_mail([TANAKA], "snap-pass")
        assert send(again.port, SENDER, [TANAKA], raw)[0] == 250
        again.advance(seconds=1)
        after = sink.wait_for(2)[1:]
        assert not [m for m in after if m.data == raw], "the password mail was relayed"
        assert [m.rcpt_tos for m in after] == [[SENDER]], "only the sender's note"
        assert "a.txt" in portal(again, f"/d/{link}")[1]
        (unlocked,) = [e for e in again.db.events() if e.kind == "unlock.unlocked"]
        assert unlocked.detail["password_mail"] == "suppress"


def test_password_mail_is_replaced_as_its_department_said_though_the_department_is_gone(
        tmp_path, sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}, "departments": [SOMU]})
    convert_one_zip(running, sink, "gone-pass")
    assert the_transfer(running).department == "somu"

    # The department is removed: its senders fall under the default policy ("suppress").
    with restarted(running, tmp_path, sink, {"policy": {"sender_receipt": False}}) as again:
        again.clock.advance(minutes=1)
        raw = password_mail([TANAKA], "gone-pass")
        assert send(again.port, SENDER, [TANAKA], raw)[0] == 250
        again.advance(seconds=1)
        after = sink.wait_for(2)[1:]
        assert [m.rcpt_tos for m in after] == [[TANAKA]], "the recipient's short notice only"
        assert "パスワードなし" in body_text(after[0].data)
        assert "gone-pass" not in body_text(after[0].data)


def test_unlock_form_keeps_the_zip_served_as_when_stored(tmp_path, sink, start_gateway):
    running = start_gateway({"policy": {"keep_original_zip": True}})
    link = convert_one_zip(running, sink, "form-pass", name="kept.zip")
    token = manage_token(running, sink, 1)

    with restarted(running, tmp_path, sink, {"policy": {"keep_original_zip": False}}) as again:
        status, _, headers = unlock_form(again, token, "form-pass")
        assert status == 303 and headers["Location"].endswith("?done=unlocked")
        page = html.unescape(portal(again, f"/d/{link}")[1])
        assert "a.txt" in page
        assert "kept.zip" in page, "the stored policy keeps the original ZIP"


def test_a_retry_reuses_the_transfer_under_its_own_policy(tmp_path, sink, start_gateway):
    """The sender's MTA retries after a partial 451; meanwhile the admin changed the password
    channel and the download limit. The reused transfer has no download password to send, and
    its new link counts downloads as the first ones do."""
    running = start_gateway({"policy": {"sender_receipt": False}})  # password "none", unlimited
    mail = corpus_mail(PPAP)
    first, second = mail.rcpt_tos
    sink.fail_next("RCPT", 451, "4.2.0 mailbox busy", recipient=second)
    assert send_corpus(running.port, mail)[0] == 451

    document = {"policy": {"sender_receipt": False, "password": "recipient-email",
                           "max_downloads": 1}}
    with restarted(running, tmp_path, sink, document) as again:
        code, text = send_corpus(again.port, mail)
        assert code == 250, text
        assert sorted(link_states(again)[second]) == ["active", "failed"]
        with sqlite3.connect(again.gateway.config.storage.database) as raw:
            limits = {row[0] for row in raw.execute("SELECT max_downloads FROM links")}
        assert limits == {0}
        again.advance(minutes=10)  # past any password delay
        assert sorted(m.rcpt_tos[0] for m in sink.wait_for(2)) == sorted([first, second])
        assert not [i for i in again.db.query("SELECT kind FROM outbox")], "no password notice"
