"""The portal's pages: landing content in ja/en, link states, security headers, escaping.

Through tests.support.portal_harness: the real Database + BlobStore + app on a loopback port.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from gateway.config import PortalSettings
from gateway.store.passwords import new_token
from gateway.web.security import CONTENT_SECURITY_POLICY
from tests.support.portal_harness import (
    CSRF_FIELD,
    JA_ZIP,
    RECIPIENT,
    SENDER,
    PortalHarness,
    corpus_file,
    csrf_of,
    landing,
    open_harness,
    set_cookies,
)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[PortalHarness]:
    yield from open_harness(tmp_path)


# -- the landing page -------------------------------------------------------------------


def test_landing_page_in_japanese_shows_sender_subject_files_expiry_and_downloads_left(harness):
    data, sha = corpus_file("01_aes256_7zip_ja.zip")
    pdf, pdf_sha = corpus_file("12a_plain.pdf")
    issued = harness.add_transfer([(JA_ZIP, data), ("仕様書.pdf", pdf)], max_downloads=3)[0]

    status, body, response = harness.run(lambda c: landing(c, issued))

    assert status == 200 and response.headers["Content-Language"] == "ja"
    assert '<html lang="ja">' in body
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in body
    for text in (SENDER, "お見積りの件", RECIPIENT, JA_ZIP, "6.7 KB（6,878 バイト）", sha,
                 "仕様書.pdf", "12.6 KB（12,859 バイト）", pdf_sha, "3 回",
                 # 2026-11-26 00:12:40 UTC + 7 days, in Tokyo
                 "2026年12月3日(木) 09:12 JST", "すべてまとめてダウンロード（ZIP）"):
        assert text in body, text
    assert body.count('method="post"') == 3  # one per file, one for all
    assert '<script' not in body and 'style="' not in body


def test_landing_page_in_english_when_accept_language_prefers_it(harness):
    issued = harness.add_one()

    status, body, response = harness.run(
        lambda c: landing(c, issued, **{"Accept-Language": "en-GB,en;q=0.9,ja;q=0.4"}))

    assert status == 200 and response.headers["Content-Language"] == "en"
    assert '<html lang="en">' in body
    for text in ("Download files", "Thu, 3 Dec 2026 09:12 JST", "Unlimited",
                 "6.7 KB (6,878 bytes)", JA_ZIP):
        assert text in body, text
    assert "すべて" not in body  # a single file offers no ZIP of all


@pytest.mark.parametrize("header, expected", [
    ("", "ja"), ("fr-FR, de;q=0.8", "ja"), ("en;q=0.2, ja;q=0.9", "ja"), ("en-US", "en"),
    ("ja;q=0, en;q=0.1", "en"), ("*", "ja"),
])
def test_accept_language_picks_the_best_supported_locale_defaulting_to_japanese(
    harness, header, expected
):
    issued = harness.add_one()
    _status, _body, response = harness.run(
        lambda c: landing(c, issued, **({"Accept-Language": header} if header else {})))
    assert response.headers["Content-Language"] == expected


def test_lang_switch_link_sets_a_cookie_that_wins_over_accept_language(harness):
    issued = harness.add_one()

    async def scenario(client):
        _s, body_ja, _ = await landing(client, issued)
        switched = await client.get(f"{issued.path}?lang=en")
        remembered = await client.get(issued.path, headers={
            "Cookie": "lang=en", "Accept-Language": "ja"})
        return body_ja, switched, await switched.text(), await remembered.text()

    body_ja, switched, body_switched, body_remembered = harness.run(scenario)

    assert f'href="{issued.path}?lang=en"' in body_ja
    cookie = set_cookies(switched)["lang"]
    assert cookie.value == "en" and cookie["path"] == "/" and cookie["httponly"]
    assert cookie["samesite"] == "Lax" and cookie["secure"]
    assert '<html lang="en">' in body_switched and f'href="{issued.path}?lang=ja"' in body_switched
    assert '<html lang="en">' in body_remembered


def test_get_and_head_never_count_a_download_nor_send_file_bytes(harness):
    data, _sha = corpus_file("01_aes256_7zip_ja.zip")
    issued = harness.add_one(data=data, max_downloads=1)

    async def scenario(client):
        bodies = []
        for _ in range(3):
            bodies.append(await (await client.get(issued.path)).read())
            head = await client.head(issued.path)
            assert head.status == 200 and await head.read() == b""
        return bodies

    bodies = harness.run(scenario)

    assert all(b"PK\x03\x04" not in body and data[30:60] not in body for body in bodies)
    assert harness.link(issued).download_count == 0
    assert harness.events() == []
    assert harness.hook_calls == []


# -- link states ---------------------------------------------------------------------------


def _expire(harness, issued):
    harness.clock.advance(days=8)


def _revoke(harness, issued):
    with harness.db.transaction():
        harness.db._execute("UPDATE links SET state = 'revoked' WHERE id = ?", (issued.link_id,))


def _use_up(harness, issued):
    assert harness.db.claim_download(issued.link_id)


def _purge(harness, issued):
    harness.db.mark_purged(issued.transfer_id)


@pytest.mark.parametrize("change, reason, wording", [
    (_expire, "expired", "このリンクの有効期限は 2026年12月3日(木) 09:12 JST に切れました。"),
    (_revoke, "revoked", "このリンクは差出人により取り消されました。"),
    (_use_up, "limit_reached", "このリンクはダウンロード回数の上限に達しました。"),
    (_purge, "expired", "このリンクの有効期限は 2026年12月3日(木) 09:12 JST に切れました。"),
])
def test_ended_links_get_410_naming_the_sender_and_are_audited(harness, change, reason, wording):
    issued = harness.add_one(max_downloads=1)
    change(harness, issued)

    async def scenario(client):
        page = await client.get(issued.path)
        csrf_less = await client.post(f"{issued.path}/f/{issued.files[0].id}"
                                      if issued.files else f"{issued.path}/all")
        return page.status, await page.text(), csrf_less.status

    status, body, post_status = harness.run(scenario)

    assert status == 410 and post_status == 410
    assert wording in body
    assert f"差出人（{SENDER}）にお問い合わせください" in body
    refused = harness.events("download.refused")
    assert [e.detail["reason"] for e in refused] == [reason, reason]
    assert [e.detail["method"] for e in refused] == ["GET", "POST"]
    assert all(e.link_id == issued.link_id and e.recipient == RECIPIENT
               and e.transfer_id == issued.transfer_id and e.detail["client_ip"] == "127.0.0.1"
               for e in refused)
    assert harness.hook_calls == [("refusal", {"reason": reason})] * 2


def test_link_expires_exactly_at_its_stated_time(harness):
    issued = harness.add_one(lifetime=timedelta(hours=1))
    harness.clock.advance(minutes=59, seconds=59)
    assert harness.run(lambda c: landing(c, issued))[0] == 200
    harness.clock.advance(seconds=1)
    assert harness.run(lambda c: landing(c, issued))[0] == 410


@pytest.mark.parametrize("kind", ["unknown", "malformed", "long", "pending", "failed",
                                  "transfer_failed"])
def test_unknown_malformed_pending_and_failed_links_get_the_same_404_page(harness, kind):
    reference = harness.add_one()
    if kind in ("pending", "failed"):
        path = harness.add_one(link_state=kind).path
    elif kind == "transfer_failed":
        path = harness.add_one(transfer_state="failed").path
    else:
        path = {"unknown": f"/d/{new_token()}", "malformed": "/d/%3Cscript%3E%27%22%00",
                "long": "/d/" + "x" * 4000}[kind]

    async def scenario(client):
        missing = await client.get(path)
        unknown = await client.get(f"/d/{new_token()}")
        return missing.status, await missing.text(), await unknown.text()

    status, body, unknown_body = harness.run(scenario)

    assert status == 404 and body == unknown_body
    assert "ページが見つかりません" in body and SENDER not in body
    assert harness.link(reference).download_count == 0
    known = kind in ("pending", "failed", "transfer_failed")
    assert [e.detail["reason"] for e in harness.events()] == (["not_active"] if known else [])
    assert harness.hook_calls[0] == ("refusal", {"reason": "not_active" if known
                                                 else "not_found"})


# -- headers and escaping --------------------------------------------------------------


def _assert_security_headers(response, https: bool = True) -> None:
    headers = response.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, response.url
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert ("Strict-Transport-Security" in headers) is https
    if https:
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "aiohttp" not in headers.get("Server", "")


def test_every_kind_of_response_carries_the_security_headers(harness):
    issued = harness.add_one(max_downloads=1)
    gone = harness.add_one(lifetime=timedelta(minutes=1))
    harness.clock.advance(minutes=2)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        url = f"{issued.path}/f/{issued.files[0].id}"
        responses = {
            "landing": await client.get(issued.path),
            "head": await client.head(issued.path),
            "not_found": await client.get("/d/nothing-here"),
            "no_route": await client.get("/elsewhere"),
            "gone": await client.get(gone.path),
            "method": await client.get(url),
            "forbidden": await client.post(url, data={"csrf": "x"}),
            "static": await client.get("/static/portal.css"),
            "static_missing": await client.get("/static/nothing.css"),
            "download": await client.post(url, data={"csrf": csrf}),
        }
        for response in responses.values():
            await response.read()
        return responses

    responses = harness.run(scenario)

    expected = {"landing": 200, "head": 200, "not_found": 404, "no_route": 404, "gone": 410,
                "method": 405, "forbidden": 403, "static": 200, "static_missing": 404,
                "download": 200}
    assert {name: r.status for name, r in responses.items()} == expected
    for name, response in responses.items():
        _assert_security_headers(response)
        if name.startswith("static"):
            continue
        assert response.headers["Cache-Control"] == "no-store", name
    assert responses["static"].headers["Content-Type"] == "text/css"
    assert responses["download"].headers["Content-Type"] == "application/octet-stream"


def test_plain_http_public_url_sends_no_hsts_and_no_secure_cookies(harness):
    harness.settings = PortalSettings(public_url="http://files.example.test")
    issued = harness.add_one()

    response = harness.run(lambda c: c.get(f"{issued.path}?lang=en"))

    _assert_security_headers(response, https=False)
    assert not set_cookies(response)["lang"]["secure"]


def test_error_pages_are_templated_and_never_show_a_traceback(harness):
    issued = harness.add_one()

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    harness.db.files_of = broken  # the store fails underneath a request

    status, body, response = harness.run(lambda c: landing(c, issued))

    assert status == 500 and "エラーが発生しました" in body
    assert "Traceback" not in body and "secret internals" not in body
    _assert_security_headers(response)


XSS = "<script>alert(1)</script>\"'"


def test_script_and_quotes_in_filename_subject_and_sender_are_escaped(harness):
    issued = harness.add_one(name=f"{XSS}.zip", subject=XSS,
                             sender=f"\"{XSS}\"@evil.example", max_downloads=1)

    async def scenario(client):
        page = await client.get(issued.path)
        body = await page.text()
        await client.post(f"{issued.path}/f/{issued.files[0].id}",
                          data={"csrf": CSRF_FIELD.search(body).group(1)})
        gone = await client.get(issued.path)  # limit reached: the page names the sender
        return body, await gone.text()

    body, gone = harness.run(scenario)

    for page in (body, gone):
        assert "<script" not in page and "alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;" in page
    assert body.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4  # lead, from, subject, file


def test_static_directory_does_not_serve_outside_files(harness):
    async def scenario(client):
        statuses = []
        for path in ("/static/../web/base.html", "/static/%2e%2e/base.html",
                     "/static/..%2f..%2fgateway.sqlite3", "/static/"):
            response = await client.get(path)
            body = await response.text()
            assert "{%" not in body
            statuses.append(response.status)
        return statuses

    assert all(status in (403, 404) for status in harness.run(scenario))
