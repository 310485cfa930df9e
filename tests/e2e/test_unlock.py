"""Unlocking PPAP end to end: the real pair from the corpus (ZIP mail, then the password mail a
minute later on the injectable clock), a real clamd with the EICAR signature, the portal serving
what the ZIP held."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest
import pyzipper

from tests.support.portal_http import download_once
from tests.support.received import body_text, links_in
from tests.support.running import CORPUS, corpus_mail, send_corpus


def members(zip_name: str, password: str) -> dict[str, bytes]:
    with pyzipper.AESZipFile(io.BytesIO((CORPUS / "files" / zip_name).read_bytes())) as archive:
        archive.setpassword(password.encode())
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


def page(running, token: str) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{running.gateway.portal_port}/d/{token}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_password_mail_unlocks_the_zip_and_is_suppressed(clamd, sink, start_gateway):
    running = start_gateway({"scan": {"clamd": clamd.address},
                             "policy": {"sender_receipt": False}})
    zip_mail, password_mail = corpus_mail("09a_ppap1_outlook_zip"), corpus_mail("09b_ppap1_outlook_password")
    assert send_corpus(running.port, zip_mail)[0] == 250
    link_mails = sink.wait_for(2)
    token = next(iter(links_in(link_mails[0].data)))
    running.clock.advance(seconds=62)
    code, text = send_corpus(running.port, password_mail)
    assert code == 250, text
    running.advance(seconds=1)
    received = sink.wait_for(3)
    (note,) = [m for m in received if m not in link_mails]
    assert note.rcpt_tos == [zip_mail.mail_from], "only the sender hears of it"
    assert "h4Tn9xWe" not in body_text(note.data)

    expected = members("02_zipcrypto_infozip_ascii.zip", "h4Tn9xWe")
    html = page(running, token)
    for name, data in expected.items():
        assert name.rsplit("/", 1)[-1] in html
        assert hashlib.sha256(data).hexdigest() in html
    served = download_once(running, token)
    assert served in expected.values()
    kinds = [e.kind for e in running.db.events()]
    assert "unlock.unlocked" in kinds


def test_eicar_inside_the_encrypted_zip_blocks_the_transfer(clamd, sink, start_gateway):
    running = start_gateway({"scan": {"clamd": clamd.address, "admin_address": "soc@city.example.lg.jp"},
                             "policy": {"sender_receipt": False}})
    mail = corpus_mail("27_eicar_in_encrypted_zip")
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(len(mail.rcpt_tos))
    token = next(iter(links_in(link_mails[0].data)))
    password_mail = (
        f"From: <{mail.mail_from}>\r\nTo: <{mail.rcpt_tos[0]}>\r\n"
        "Subject: =?utf-8?b?44OR44K544Ov44O844OJ?=\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nパスワード：infected\r\n"
    ).encode()
    from tests.support.running import send

    assert send(running.port, mail.mail_from, mail.rcpt_tos[:1], password_mail)[0] == 250
    running.advance(seconds=1)
    notes = [m for m in sink.wait_for(len(mail.rcpt_tos) + 2) if m not in link_mails]
    assert sorted(m.rcpt_tos[0] for m in notes) == sorted([mail.mail_from, "soc@city.example.lg.jp"])
    assert all("Eicar" in body_text(m.data) for m in notes)
    with pytest.raises(urllib.error.HTTPError) as gone:
        page(running, token)
    assert gone.value.code == 410
    gone.value.close()


def test_clamd_down_defers_the_password_mail_with_451(tmp_path, sink, start_gateway):
    running = start_gateway({"scan": {"clamd": f"unix:{tmp_path}/no-clamd.sock"}})
    assert send_corpus(running.port, corpus_mail("09a_ppap1_outlook_zip"))[0] == 250
    sink.wait_for(2)
    running.clock.advance(seconds=62)
    code, text = send_corpus(running.port, corpus_mail("09b_ppap1_outlook_password"))
    assert code == 451 and "4.7.0" in text


def test_wrong_password_or_late_mail_passes_unchanged(sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})
    zip_mail, password_mail = corpus_mail("09a_ppap1_outlook_zip"), corpus_mail("09b_ppap1_outlook_password")
    assert send_corpus(running.port, zip_mail)[0] == 250
    sink.wait_for(2)
    running.clock.advance(minutes=61)  # past the 60-minute window
    assert send_corpus(running.port, password_mail)[0] == 250
    (late,) = [m for m in sink.wait_for(3) if m.data == password_mail.raw]
    assert sorted(late.rcpt_tos) == sorted(password_mail.rcpt_tos)


def test_password_mail_with_a_wrong_password_passes_unchanged(sink, start_gateway):
    from dataclasses import replace

    running = start_gateway({"policy": {"sender_receipt": False}})
    zip_mail, password_mail = corpus_mail("09a_ppap1_outlook_zip"), corpus_mail("09b_ppap1_outlook_password")
    assert b"h4Tn9xWe" in password_mail.raw
    wrong = replace(password_mail, raw=password_mail.raw.replace(b"h4Tn9xWe", b"h4Tn9xWX"))
    assert send_corpus(running.port, zip_mail)[0] == 250
    sink.wait_for(2)
    running.clock.advance(seconds=62)
    assert send_corpus(running.port, wrong)[0] == 250
    assert any(m.data == wrong.raw for m in sink.wait_for(3))
    assert "unlock.unlocked" not in [e.kind for e in running.db.events()]
