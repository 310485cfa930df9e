"""SMTP AUTH over TLS only (for clients outside allowed_clients), and start-up warnings."""

from __future__ import annotations

import logging
import smtplib
import ssl

import pytest

from gateway.store.passwords import hash_password
from tests.support.running import corpus_mail
from tests.support.tls import write_self_signed


@pytest.fixture
def auth_gateway(tmp_path, start_gateway):
    cert, key = write_self_signed(tmp_path)
    users = tmp_path / "users"
    users.write_text(f"# relay users\nscanner:{hash_password('correct horse')}\n")
    running = start_gateway({"smtp": {
        "tls_cert": str(cert), "tls_key": str(key), "auth_users_file": str(users),
        "allowed_clients": ["192.0.2.0/24"],  # loopback is NOT allowed: only AUTH lets us relay
    }})
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return running, context


def test_auth_is_refused_before_starttls(auth_gateway):
    running, _ = auth_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AHNjYW5uZXIAY29ycmVjdCBob3JzZQ==")
        assert code == 538 and b"5.7.11" in text


def test_unauthenticated_client_outside_allowed_networks_cannot_relay(auth_gateway):
    running, context = auth_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        client.mail("somu@city.example.lg.jp")
        code, text = client.rcpt("tanaka@partner.example.com")
        assert code == 554 and b"5.7.1" in text


def test_wrong_password_is_refused(auth_gateway):
    running, context = auth_gateway
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("scanner", "wrong")


def test_authenticated_client_relays_over_tls(auth_gateway, sink):
    running, context = auth_gateway
    mail = corpus_mail("13_no_attachment")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        client.login("scanner", "correct horse")
        client.sendmail(mail.mail_from, mail.rcpt_tos, mail.raw)
    assert sink.wait_for(1)[0].data == mail.raw


def test_start_up_warns_about_internal_domains_without_dkim_key(caplog, start_gateway):
    with caplog.at_level(logging.WARNING, logger="gateway"):
        start_gateway()
    assert any("no DKIM key for city.example.lg.jp" in r.getMessage() for r in caplog.records)
