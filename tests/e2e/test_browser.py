"""A real browser (headless Chromium, driven by Playwright) takes the link from a mail the gateway
really rewrote, enters the password, downloads the file and checks its SHA-256. Screenshots of the
landing page in ja and en are saved under test-artifacts/."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway.store.crypto import open_small
from gateway.store.keys import load_or_create_master_key
from gateway.store.passwords import hash_token
from tests.support.received import LINK, texts_of
from tests.support.running import corpus_mail, send_corpus

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# As the workplace's probe runs it: no background traffic to hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), "Chromium is installed by `make test` (Makefile: system-deps)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def sealed_password(running) -> str:
    storage = running.gateway.config.storage
    with sqlite3.connect(f"file:{storage.database}?mode=ro", uri=True) as connection:
        transfer_id, sealed = connection.execute(
            "SELECT id, password_sealed FROM transfers").fetchone()
    master = load_or_create_master_key(storage.master_key_file, None)
    return open_small(master, transfer_id.encode(), sealed).decode()


def test_browser_downloads_the_file_behind_a_rewritten_mail(browser, sink, start_gateway):
    running = start_gateway({"policy": {"password": "recipient-email"}})
    mail = corpus_mail("01_outlook_jis_aes256")
    assert send_corpus(running.port, mail)[0] == 250
    message = sink.wait_for(2)[0]
    (token,) = {t for text in texts_of(message.data) for t in LINK.findall(text)}
    url = f"http://127.0.0.1:{running.gateway.portal_port}/d/{token}"
    attachment = mail.side["attachments"][0]
    ARTIFACTS.mkdir(exist_ok=True)

    context = browser.new_context(accept_downloads=True, viewport={"width": 390, "height": 844},
                                  locale="ja-JP")
    page = context.new_page()
    page.goto(url)
    assert attachment["filename"] in page.content()
    page.screenshot(path=str(ARTIFACTS / "landing-ja.png"), full_page=True)
    page.goto(url + "?lang=en")
    assert "Download" in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "landing-en.png"), full_page=True)

    page.fill("#password", "wrong-password")
    page.click("form[action$='/password'] button")
    assert page.locator("[role=alert]").count() == 1
    page.fill("#password", sealed_password(running))
    page.click("form[action$='/password'] button")
    with page.expect_download() as started:
        page.click("form[action*='/f/'] button")
    download = started.value
    assert download.suggested_filename == attachment["filename"]
    saved = ARTIFACTS / "downloaded.zip"
    download.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == attachment["sha256"]
    page.screenshot(path=str(ARTIFACTS / "after-download-en.png"), full_page=True)
    context.close()

    kinds = [e.kind for e in running.db.events()]
    assert "password.failed" in kinds and "password.accepted" in kinds and "download" in kinds


def test_browser_verifies_the_recipient_by_code_and_the_sender_revokes(browser, sink, start_gateway):
    """verify_recipient: the code goes by mail to the link's recipient, is typed into the page,
    and opens the download; then the sender revokes that link from the management page."""
    import re

    from tests.support.running import PUBLIC_URL

    running = start_gateway({"policy": {"verify_recipient": True}})
    mail = corpus_mail("01_outlook_jis_aes256")
    assert send_corpus(running.port, mail)[0] == 250
    link_mails = sink.wait_for(2)
    message = link_mails[0]
    (token,) = {t for text in texts_of(message.data) for t in LINK.findall(text)}
    base = f"http://127.0.0.1:{running.gateway.portal_port}"
    attachment = mail.side["attachments"][0]

    context = browser.new_context(accept_downloads=True, locale="ja-JP")
    page = context.new_page()
    page.goto(f"{base}/d/{token}?lang=en")
    assert page.locator("form[action*='/f/']").count() == 0, "no download before the code"
    page.click("form[action$='/otp'] button")
    code_mail = next(m for m in sink.wait_for(3) if m not in link_mails)
    assert code_mail.rcpt_tos == message.rcpt_tos, "the code goes to the link's own recipient"
    (code,) = re.findall(r"\b(\d{6})\b", "\n".join(texts_of(code_mail.data)))
    page.fill("#code", code)
    page.click("form[action$='/otp/verify'] button")
    page.screenshot(path=str(ARTIFACTS / "verified-en.png"), full_page=True)
    with page.expect_download() as started:
        page.click("form[action*='/f/'] button")
    saved = ARTIFACTS / "downloaded-after-code.zip"
    started.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == attachment["sha256"]

    running.advance(minutes=2)  # the sender's receipt, with the management link
    receipt = next(m for m in sink.wait_for(5) if m.rcpt_tos == [mail.mail_from]
                   and "/m/" in "\n".join(texts_of(m.data)))
    (manage,) = re.findall(re.escape(PUBLIC_URL) + r"/m/([A-Za-z0-9_-]+)",
                           "\n".join(texts_of(receipt.data)))
    page.goto(f"{base}/m/{manage}?lang=en")
    assert message.rcpt_tos[0] in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "manage-en.png"), full_page=True)
    link_id = running.db.link_by_token_hash(hash_token(token)).id
    page.click(f"form[action$='/revoke']:has(input[value='{link_id}']) button")
    response = page.goto(f"{base}/d/{token}")
    assert response.status == 410
    context.close()
