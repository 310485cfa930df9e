"""Policy seen from outside: passwords made and kept sealed, signed mail untouched, SMTPUTF8,
per-department locale, and the log line for a ZIP too broken to read."""

from __future__ import annotations

import logging
from email import message_from_bytes, policy

from gateway.store.crypto import open_small
from gateway.store.keys import DOWNLOAD_PASSWORD_KEY, derive_key, load_or_create_master_key
from gateway.store.passwords import verify_password
from tests.support.received import links_in, texts_of
from tests.support.running import corpus_mail, send, send_corpus
from tests.support.store_rows import transfer_rows


def test_password_policy_makes_a_password_kept_hashed_and_sealed(sink, start_gateway):
    running = start_gateway({"policy": {"password": "recipient-email", "locale": "en"}})
    mail = corpus_mail("01_outlook_jis_aes256")
    assert send_corpus(running.port, mail)[0] == 250
    for message in sink.wait_for(2):
        text = "".join(texts_of(message.data))
        assert "separate" in text.lower(), "the notice says a password will arrive separately"
    (row,) = transfer_rows(running)
    assert row["password_channel"] == "recipient-email"
    storage = running.gateway.config.storage
    master = load_or_create_master_key(storage.master_key_file, None)
    password = open_small(master, row["id"].encode(), row["password_sealed"]).decode()
    key = derive_key(master, DOWNLOAD_PASSWORD_KEY)
    assert len(password) == 12 and verify_password(password, row["password_hash"], key)
    # the plaintext never sits in the database or in any relayed mail
    for path in storage.data_dir.glob("gateway.sqlite3*"):
        assert password.encode() not in path.read_bytes()
    assert all(password.encode() not in m.data for m in sink.messages)


def test_department_policy_picks_the_notice_language(sink, start_gateway):
    running = start_gateway({"departments": [
        {"name": "intl", "senders": ["somu@city.example.lg.jp"], "policy": {"locale": "en"}}]})
    assert send_corpus(running.port, corpus_mail("01_outlook_jis_aes256"))[0] == 250
    for message in sink.wait_for(2):
        assert "Download" in "".join(texts_of(message.data))


SIGNED = (
    b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\nSubject: signed\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
    b" micalg=sha-256; boundary=\"S\"\r\n\r\n--S\r\nContent-Type: multipart/mixed; boundary=\"M\"\r\n\r\n"
    b"--M\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--M\r\n"
    b"Content-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
)


def test_a_fake_signature_does_not_let_an_encrypted_zip_pass(sink, start_gateway):
    """A multipart/signed whose signature part is not PKCS#7 is an ordinary multipart: its
    ZIP is converted like any other (the genuine case is in test_fail_closed)."""
    import base64

    from tests.support.running import CORPUS

    zip_b64 = base64.encodebytes((CORPUS / "files" / "01_aes256_7zip_ja.zip").read_bytes())
    data = (SIGNED + zip_b64.replace(b"\n", b"\r\n") + b"--M--\r\n--S\r\n"
            b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQE=\r\n--S--\r\n")
    running = start_gateway()
    assert send(running.port, "somu@city.example.lg.jp", ["tanaka@partner.example.com"], data)[0] == 250
    (message,) = sink.wait_for(1)
    assert message.data != data and b"X-PPAP-Gateway: converted" in message.data


def test_smtputf8_mail_is_relayed_with_smtputf8(sink, start_gateway):
    running = start_gateway()
    data = "From: <somu@city.example.lg.jp>\r\nTo: <田中@partner.example.com>\r\nSubject: utf8\r\n\r\nこんにちは\r\n".encode()
    code, text = send(running.port, "somu@city.example.lg.jp", ["田中@partner.example.com"], data,
                      ("SMTPUTF8", "BODY=8BITMIME"))
    assert code == 250, text
    (message,) = sink.wait_for(1)
    assert message.rcpt_tos == ["田中@partner.example.com"] and message.data == data
    assert "SMTPUTF8" in [o.upper() for o in message.mail_options]


def test_next_hop_550_for_every_recipient_is_passed_back_naming_it(sink, start_gateway):
    """Nobody got the message: the sending MTA bounces it, with the next hop's reason. (One
    recipient refused while others were taken is a 250 and a report: test_relay_contract.py.)"""
    running = start_gateway()
    mail = corpus_mail("01_outlook_jis_aes256")
    refused = mail.rcpt_tos[1]
    sink.fail_next("RCPT", 550, "5.1.1 no such user", recipient=refused)
    code, text = send(running.port, mail.mail_from, [refused], mail.raw)
    assert code == 550 and "5.1.1" in text and refused in text
    assert sink.messages == []


def test_corrupt_zip_is_held_back_and_logged(caplog, sink, start_gateway):
    import base64

    running = start_gateway()
    broken = base64.encodebytes(b"PK\x03\x04" + b"\x00" * 40).replace(b"\n", b"\r\n")
    data = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
            b"Subject: broken\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/zip\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=x.zip\r\n\r\n"
            + broken + b"--B--\r\n")
    with caplog.at_level(logging.INFO, logger="gateway.message"):
        assert send(running.port, "somu@city.example.lg.jp", ["tanaka@partner.example.com"], data)[0] == 250
    (message,) = sink.wait_for(1)
    assert len(links_in(message.data)) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.message"]
    assert len(lines) == 1 and "corrupt-zip held back" in lines[0]
    parts = [p.get_content_type() for p in message_from_bytes(message.data, policy=policy.default).walk()]
    assert "application/zip" not in parts
