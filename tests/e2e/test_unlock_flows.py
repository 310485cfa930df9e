"""Unlocking PPAP beyond the plain pair: the sender's unlock form, `replace`, a password mail whose
recipients only partly hold links, two waiting ZIPs from one sender, and hostile archives (a zip
bomb, path traversal) going through the real gateway."""

from __future__ import annotations

import hashlib
import html
import io

import pyzipper

from gateway.sample import build_encrypted_zip as encrypted_zip
from tests.support.portal_http import download_once, manage_token, portal, unlock_form
from tests.support.ppap import SENDER, password_mail, zip_mail, zipcrypto_zip
from tests.support.received import body_text, links_in
from tests.support.running import corpus_mail, send, send_corpus

TANAKA, EIGYO = "tanaka@partner.example.com", "eigyo@partner.example.com"


def test_sender_opens_the_zip_on_the_management_page(clamd, sink, start_gateway):
    running = start_gateway({"scan": {"clamd": clamd.address}})
    mail = corpus_mail("09a_ppap1_outlook_zip")
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(2)
    token = manage_token(running, sink, 2)
    _, page, _ = portal(running, f"/m/{token}")
    assert 'action="/m/' in page and "/unlock" in page

    status, page, _ = unlock_form(running, token, "h4Tn9xWX")
    assert status == 400 and "開けません" in page
    status, _, headers = unlock_form(running, token, "ｈ４Ｔｎ９ｘＷｅ")  # full-width, as an IME types
    assert status == 303 and headers["Location"].endswith("?done=unlocked")

    _, page, _ = portal(running, f"/m/{token}")
    assert "/unlock" not in page, "no form once open"
    with pyzipper.ZipFile(io.BytesIO(_corpus_file("02_zipcrypto_infozip_ascii.zip"))) as archive:
        archive.setpassword(b"h4Tn9xWe")
        expected = {archive.read(i) for i in archive.infolist() if not i.is_dir()}
    link = next(iter(links_in(link_mails[0].data)))
    assert download_once(running, link) in expected
    running.advance(seconds=1)
    # two "no password needed any more" notices, and the sender's download notice
    told = [m for m in sink.wait_for(6)[3:] if "パスワードなし" in body_text(m.data)]
    assert sorted(m.rcpt_tos[0] for m in told) == sorted(mail.rcpt_tos)
    assert "unlock.unlocked" in [e.kind for e in running.db.events()]


def test_form_with_a_virus_blocks_the_transfer(clamd, sink, start_gateway):
    running = start_gateway({"scan": {"clamd": clamd.address}})
    mail = corpus_mail("27_eicar_in_encrypted_zip")
    assert send_corpus(running.port, mail)[0] == 250
    link = next(iter(links_in(sink.wait_for(len(mail.rcpt_tos))[0].data)))
    token = manage_token(running, sink, len(mail.rcpt_tos))
    status, _, headers = unlock_form(running, token, "infected")
    assert status == 303 and headers["Location"].endswith("?done=blocked")
    assert portal(running, f"/d/{link}")[0] == 410


def test_form_attempts_are_limited_per_transfer(sink, start_gateway):
    running = start_gateway()
    assert send_corpus(running.port, corpus_mail("09a_ppap1_outlook_zip"))[0] == 250
    sink.wait_for(2)
    token = manage_token(running, sink, 2)
    statuses = [unlock_form(running, token, f"guess-{n}")[0] for n in range(11)]
    assert statuses == [400] * 10 + [429]
    assert unlock_form(running, token, "h4Tn9xWe")[0] == 429, "even the right one waits"
    running.clock.advance(minutes=16)
    assert unlock_form(running, token, "h4Tn9xWe")[0] == 303


def test_replace_sends_a_short_notice_instead_of_the_password(sink, start_gateway):
    running = start_gateway({"policy": {"password_mail": "replace", "sender_receipt": False}})
    mail = corpus_mail("09a_ppap1_outlook_zip")
    assert send_corpus(running.port, mail)[0] == 250
    sink.wait_for(2)
    running.clock.advance(seconds=62)
    assert send_corpus(running.port, corpus_mail("09b_ppap1_outlook_password"))[0] == 250
    running.advance(seconds=1)
    notices = sink.wait_for(4)[2:]
    assert sorted(m.rcpt_tos[0] for m in notices) == sorted(mail.rcpt_tos)
    for notice in notices:
        assert "h4Tn9xWe" not in body_text(notice.data)
        # Tokens are stored hashed, so the notice points to the earlier mail's link.
        assert "パスワードなし" in body_text(notice.data)


def test_recipients_without_a_link_get_the_password_mail_unchanged(sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})
    data = encrypted_zip({"見積書.xlsx": b"quote" * 1000}, "Pa55-word")
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], data))[0] == 250
    sink.wait_for(1)
    running.clock.advance(minutes=1)
    other = "sato@another.example.net"
    raw = password_mail([TANAKA, other], "Pa55-word")
    assert send(running.port, SENDER, [TANAKA, other], raw)[0] == 250
    running.advance(seconds=1)
    received = sink.wait_for(3)[1:]
    passed = [m for m in received if m.data == raw]
    assert [m.rcpt_tos for m in passed] == [[other]]
    assert [m.rcpt_tos for m in received if m.data != raw] == [[SENDER]]  # the sender's note


def test_two_waiting_zips_each_open_with_their_own_password(sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})
    first = encrypted_zip({"a.txt": b"first " * 100}, "first-pass")
    second = zipcrypto_zip({"b.txt": b"second " * 100}, "second-pass")
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], first, "a.zip"))[0] == 250
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], second, "b.zip"))[0] == 250
    links = [next(iter(links_in(m.data))) for m in sink.wait_for(2)]
    running.clock.advance(minutes=1)
    assert send(running.port, SENDER, [TANAKA], password_mail([TANAKA], "first-pass"))[0] == 250
    assert "a.txt" in portal(running, f"/d/{links[0]}")[1]
    assert "b.zip" in portal(running, f"/d/{links[1]}")[1], "the other stays locked"
    running.clock.advance(minutes=1)
    assert send(running.port, SENDER, [TANAKA], password_mail([TANAKA], "second-pass"))[0] == 250
    assert "b.txt" in portal(running, f"/d/{links[1]}")[1]
    running.advance(seconds=1)
    assert all(m.rcpt_tos == [SENDER] for m in sink.wait_for(4)[2:]), "no password relayed"


def test_one_password_opens_two_waiting_zips(sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})
    for name in ("a.zip", "b.zip"):
        data = encrypted_zip({name[0] + ".txt": name.encode() * 50}, "same-pass")
        assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], data, name))[0] == 250
    links = [next(iter(links_in(m.data))) for m in sink.wait_for(2)]
    running.clock.advance(minutes=1)
    assert send(running.port, SENDER, [TANAKA], password_mail([TANAKA], "same-pass"))[0] == 250
    assert "a.txt" in portal(running, f"/d/{links[0]}")[1]
    assert "b.txt" in portal(running, f"/d/{links[1]}")[1]


def test_zip_bomb_is_refused_and_the_password_mail_passes(sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})
    bomb = encrypted_zip({"zeros.bin": bytes(20 * 1024 * 1024)}, "bomb-pass")
    assert len(bomb) < 100_000, "ratio far beyond the limit of 200"
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], bomb, "bomb.zip"))[0] == 250
    link = next(iter(links_in(sink.wait_for(1)[0].data)))
    running.clock.advance(minutes=1)
    raw = password_mail([TANAKA], "bomb-pass")
    assert send(running.port, SENDER, [TANAKA], raw)[0] == 250
    assert [m.rcpt_tos for m in sink.wait_for(2)[1:] if m.data == raw] == [[TANAKA]]
    assert "bomb.zip" in portal(running, f"/d/{link}")[1], "the encrypted ZIP is still served"
    assert "unlock.refused" in [e.kind for e in running.db.events()]


def test_traversal_names_become_display_names_only(tmp_path, sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": False}})
    data = encrypted_zip({"../../../../tmp/pwned.txt": b"owned?", "/etc/cron.d/x": b"x"}, "tr-pass")
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], data, "t.zip"))[0] == 250
    link = next(iter(links_in(sink.wait_for(1)[0].data)))
    running.clock.advance(minutes=1)
    assert send(running.port, SENDER, [TANAKA], password_mail([TANAKA], "tr-pass"))[0] == 250
    page = html.unescape(portal(running, f"/d/{link}")[1])
    assert "pwned.txt" in page and "../" not in page
    assert hashlib.sha256(b"owned?").hexdigest() in page
    written = [p for p in tmp_path.rglob("*") if "pwned" in p.name or p.name == "x"]
    assert written == []


def _corpus_file(name: str) -> bytes:
    from tests.support.running import CORPUS

    return (CORPUS / "files" / name).read_bytes()


def test_pass_relays_the_password_mail_unchanged_yet_serves_the_files(sink, start_gateway):
    running = start_gateway({"policy": {"password_mail": "pass", "sender_receipt": False}})
    data = encrypted_zip({"a.txt": b"contents " * 100}, "pass-pass")
    assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], data, "a.zip"))[0] == 250
    link = next(iter(links_in(sink.wait_for(1)[0].data)))
    running.clock.advance(minutes=1)
    raw = password_mail([TANAKA], "pass-pass")
    assert send(running.port, SENDER, [TANAKA], raw)[0] == 250
    assert [m.rcpt_tos for m in sink.wait_for(2)[1:] if m.data == raw] == [[TANAKA]]
    assert "a.txt" in portal(running, f"/d/{link}")[1]


def test_scanner_down_defers_a_password_mail_for_two_zips_without_opening_either(
        tmp_path, sink, start_gateway):
    running = start_gateway({"scan": {"clamd": f"unix:{tmp_path}/no-clamd.sock"},
                             "policy": {"sender_receipt": False, "convert": "encrypted-zip"}})
    for name in ("a.zip", "b.zip"):
        data = encrypted_zip({name[0] + ".txt": name.encode() * 50}, "same-pass")
        assert send(running.port, SENDER, [TANAKA], zip_mail([TANAKA], data, name))[0] == 250
    sink.wait_for(2)
    running.clock.advance(minutes=1)
    code, text = send(running.port, SENDER, [TANAKA], password_mail([TANAKA], "same-pass"))
    assert code == 451 and "4.7.0" in text
    assert not [e for e in running.db.events() if e.kind.startswith("unlock.")]
    assert len(sink.messages) == 2, "the password mail waits with the sender's MTA"
    ordinary = password_mail([TANAKA], "opens-nothing")
    assert send(running.port, SENDER, [TANAKA], ordinary)[0] == 250, "other mail is not held up"
