"""The sender's management page (recipients, downloads, revoke, extend) and the download
notices the portal queues for the sender.

Through ChannelHarness (tests.support.portal_harness): PortalHarness with the transfer controls,
the outbox, a real sealer and a counted wake-up.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from gateway.store.controls import ExtensionRefused
from gateway.store.passwords import new_token
from gateway.web.security import make_csrf_token
from tests.support.portal_harness import (
    CSRF_FIELD,
    JA_ZIP,
    OTHER,
    RECIPIENT,
    SAME_ORIGIN,
    SECRET,
    SENDER,
    ChannelHarness,
    corpus_file,
    csrf_of,
    download,
    open_channel_harness,
)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ChannelHarness]:
    yield from open_channel_harness(tmp_path)


async def manage_page(client, token: str, query: str = "", **headers: str) -> tuple[int, str]:
    response = await client.get(f"/m/{token}{query}", headers=headers)
    return response.status, await response.text()


def query_of(response) -> str:
    return "?" + response.headers["Location"].split("?", 1)[1]


async def manage_post(client, token: str, action: str, data: dict,
                      headers: dict | None = None, csrf: str | None = None):
    if csrf is None:
        csrf = CSRF_FIELD.search((await manage_page(client, token))[1]).group(1)
    response = await client.post(f"/m/{token}/{action}", data={"csrf": csrf, **data},
                                 headers=SAME_ORIGIN if headers is None else headers,
                                 allow_redirects=False)
    return response, await response.text()


def recipient_block(page: str, address: str) -> str:
    """The page's <li> about one recipient."""
    match = re.search(rf'<p class="name address">{re.escape(address)}</p>(.*?)</li>', page, re.DOTALL)
    assert match, address
    return match.group(1)


# -- the page -------------------------------------------------------------------------------


def test_page_lists_each_recipient_with_delivery_downloads_and_password_notice(harness):
    token, (tanaka, suzuki) = harness.controlled(recipients=(RECIPIENT, OTHER))
    harness.outbox.enqueue(kind="password-recipient", now=harness.clock(),
                           due_at=harness.clock() + timedelta(minutes=5),
                           transfer_id=tanaka.transfer_id, link_id=tanaka.link_id)
    sent_id = harness.outbox.enqueue(kind="password-recipient", now=harness.clock(),
                                     due_at=harness.clock(), transfer_id=suzuki.transfer_id,
                                     link_id=suzuki.link_id)
    harness.outbox.mark_sent(harness.outbox.get(sent_id), harness.clock() + timedelta(seconds=3))

    async def scenario(client):
        assert await download(client, tanaka) == 200
        harness.clock.advance(hours=2)
        assert await download(client, tanaka) == 200
        return await manage_page(client, token)

    status, page = harness.run(scenario)

    assert status == 200
    _data, sha = corpus_file("01_aes256_7zip_ja.zip")
    for text in ("送信したファイルの管理", "お見積りの件", SENDER, JA_ZIP, sha,
                 "6.7 KB（6,878 バイト）", "2026年12月3日(木) 09:12 JST",  # expiry, Tokyo
                 "2026年12月26日(土) 09:12 JST"):  # the policy's maximum
        assert text in page, text
    mine = recipient_block(page, RECIPIENT)
    assert "有効" in mine and "2026年11月26日(木) 09:12 JST" in mine  # delivered
    assert "2 回（初回 2026年11月26日(木) 09:12 JST、最終 2026年11月26日(木) 11:12 JST）" in mine
    assert "送信待ち（2026年11月26日(木) 09:17 JST に送信予定）" in mine
    other = recipient_block(page, OTHER)
    assert "まだダウンロードされていません" in other
    assert "送信済み（2026年11月26日(木) 09:12 JST）" in other
    assert page.count('name="link" value="') == 3  # one per recipient and "all"


def test_page_in_english_shows_a_single_download_once(harness):
    token, (issued,) = harness.controlled()

    async def scenario(client):
        await download(client, issued)
        return await manage_page(client, token, **{"Accept-Language": "en"})

    status, page = harness.run(scenario)

    assert status == 200 and '<html lang="en">' in page
    assert "Manage your transfer" in page and "Once (Thu, 26 Nov 2026 09:12 JST)" in page
    assert f'href="/m/{token}?lang=ja"' in page


@pytest.mark.parametrize("kind", ["unknown", "download_token", "malformed", "failed"])
def test_unknown_or_wrong_management_token_gets_the_common_404(harness, kind):
    _token, (issued,) = harness.controlled()
    failed_token, _ = harness.controlled(transfer_state="failed")
    path = {"unknown": f"/m/{new_token()}", "download_token": f"/m/{issued.token}",
            "malformed": "/m/%3Cscript%3E", "failed": f"/m/{failed_token}"}[kind]

    async def scenario(client):
        responses = [await client.get(path), await client.get(f"/d/{new_token()}"),
                     await client.post(f"{path}/revoke", data={"link": "all"},
                                       headers=SAME_ORIGIN)]
        return [(r.status, await r.text()) for r in responses]

    (status, body), (_s, unknown_download), (post_status, _b) = harness.run(scenario)

    assert (status, post_status) == (404, 404) and body == unknown_download
    assert harness.link(issued).state == "active" and harness.events() == []


# -- revoking ---------------------------------------------------------------------------


def test_revoking_one_link_closes_it_cancels_its_notices_and_leaves_the_other(harness):
    token, (tanaka, suzuki) = harness.controlled(recipients=(RECIPIENT, OTHER))
    now = harness.clock()
    for link in (tanaka, suzuki):
        harness.outbox.enqueue(kind="password-recipient", now=now, due_at=now + timedelta(
            minutes=5), transfer_id=link.transfer_id, link_id=link.link_id)

    async def scenario(client):
        response, _ = await manage_post(client, token, "revoke", {"link": tanaka.link_id})
        _status, page = await manage_page(client, token, query_of(response))
        gone = await client.get(tanaka.path)
        return response, page, gone.status, await gone.text(), await download(client, suzuki)

    response, page, gone_status, gone_body, other_status = harness.run(scenario)

    assert response.status == 303 and response.headers["Location"] == f"/m/{token}?done=revoked"
    assert "リンクを取り消しました。" in page
    assert "取り消し済み" in recipient_block(page, RECIPIENT)
    assert 'name="link" value="' + tanaka.link_id not in page
    assert gone_status == 410 and "差出人により取り消されました" in gone_body
    assert other_status == 200
    states = {i.link_id: i.state for i in harness.items("password-recipient")}
    assert states == {tanaka.link_id: "cancelled", suzuki.link_id: "pending"}
    (revoked,) = harness.events("link.revoked")
    assert revoked.link_id == tanaka.link_id and revoked.detail["by"] == "sender"
    assert revoked.detail["client_ip"] == "127.0.0.1" and revoked.detail["links"] == 1
    assert token not in json.dumps([(e.kind, e.link_id, e.detail) for e in harness.events()])


def test_revoking_all_closes_every_link_and_cancels_recipient_and_password_notices(harness):
    token, links = harness.controlled(recipients=(RECIPIENT, OTHER))
    now = harness.clock()
    tid = links[0].transfer_id
    harness.outbox.enqueue(kind="password-sender", now=now, due_at=now + timedelta(minutes=1),
                           transfer_id=tid)
    harness.outbox.enqueue(kind="otp", now=now, due_at=now, transfer_id=tid,
                           link_id=links[1].link_id)
    harness.outbox.enqueue(kind="download-notice", now=now, due_at=now, transfer_id=tid,
                           link_id=links[0].link_id)

    async def scenario(client):
        response, _ = await manage_post(client, token, "revoke", {"link": "all"})
        again, _ = await manage_post(client, token, "revoke", {"link": "all"})
        _status, page = await manage_page(client, token)
        return response, again, page, [(await client.get(l.path)).status for l in links]

    response, again, page, statuses = harness.run(scenario)

    assert response.headers["Location"] == f"/m/{token}?done=revoked"
    assert again.headers["Location"] == f"/m/{token}?done=unchanged"
    assert statuses == [410, 410]
    assert all(harness.link(l).state == "revoked" for l in links)
    assert {i.kind: i.state for i in harness.items()} == {
        "password-sender": "cancelled", "otp": "cancelled", "download-notice": "pending"}
    assert [e.detail["links"] for e in harness.events("link.revoked")] == [2]
    assert "すべてのリンクを取り消す" not in page and page.count("取り消し済み") == 2


def test_revoking_a_link_of_another_transfer_changes_nothing(harness):
    token, _ = harness.controlled()
    _other_token, (foreign,) = harness.controlled(recipients=(OTHER,))

    async def scenario(client):
        return (await manage_post(client, token, "revoke", {"link": foreign.link_id}))[0]

    assert harness.run(scenario).headers["Location"] == f"/m/{token}?done=unchanged"
    assert harness.link(foreign).state == "active" and harness.events("link.revoked") == []


# -- extending --------------------------------------------------------------------------


def test_extending_within_the_maximum_moves_the_expiry_the_download_page_shows(harness):
    token, (issued,) = harness.controlled()

    async def scenario(client):
        response, _ = await manage_post(client, token, "extend", {"days": "7"})
        _status, page = await manage_page(client, token, query_of(response))
        landing = await (await client.get(issued.path)).text()
        return response, page, landing

    response, page, landing = harness.run(scenario)

    assert response.status == 303 and response.headers["Location"] == f"/m/{token}?done=extended"
    assert "有効期限を延長しました。" in page
    assert "2026年12月10日(木) 09:12 JST" in page and "2026年12月10日(木) 09:12 JST" in landing
    assert harness.db.transfer(issued.transfer_id).expires_at == harness.clock() + timedelta(
        days=14)
    (event,) = harness.events("transfer.extended")
    assert event.detail["by"] == "sender" and event.detail["to"].startswith("2026-12-10T00:12:40")


def test_extension_is_capped_at_the_maximum_and_refused_beyond_it(harness):
    token, (issued,) = harness.controlled(max_lifetime=timedelta(days=10))

    async def scenario(client):
        _status, before = await manage_page(client, token)
        capped, _ = await manage_post(client, token, "extend", {"days": "7"})
        refused, refused_page = await manage_post(client, token, "extend", {"days": "1"})
        forged, _ = await manage_post(client, token, "extend", {"days": "30"})
        return before, capped, refused, refused_page, forged

    before, capped, refused, refused_page, forged = harness.run(scenario)

    # +3, +7 and "to the maximum" all end at the maximum: offered once.
    assert re.findall(r'<option value="([^"]+)">', before) == ["1", "3"]
    assert capped.status == 303
    expiry = harness.db.transfer(issued.transfer_id).expires_at
    assert expiry == harness.clock() + timedelta(days=10)
    assert refused.status == 409 and forged.status == 400
    assert "延長できませんでした" in refused_page and "<select" not in refused_page
    assert "有効期限はすでに上限（2026年12月6日(日) 09:12 JST）です。" in refused_page
    assert len(harness.events("transfer.extended")) == 1


def test_ended_transfer_shows_its_history_but_can_no_longer_be_extended(harness):
    token, (issued,) = harness.controlled()
    harness.clock.advance(days=8)

    async def scenario(client):
        _status, page = await manage_page(client, token)
        # The page offers no form any more; a token as the page would have made it:
        csrf = make_csrf_token(SECRET, f"manage:{issued.transfer_id}", harness.clock())
        response, _ = await manage_post(client, token, "extend", {"days": "1"}, csrf=csrf)
        return page, response.status

    page, status = harness.run(scenario)

    assert "有効期限が過ぎたため" in page and "<form" not in page
    assert status == 409
    with pytest.raises(ExtensionRefused):
        harness.controls.extend(issued.transfer_id, harness.clock() + timedelta(days=1),
                                harness.clock(), by="test")


# -- CSRF and origin ----------------------------------------------------------------------


@pytest.mark.parametrize("action, data", [("revoke", {"link": "all"}), ("extend", {"days": "1"})])
def test_management_forms_need_their_own_csrf_token_and_same_origin(harness, action, data):
    token, (issued,) = harness.controlled()

    async def scenario(client):
        page_csrf = CSRF_FIELD.search((await manage_page(client, token))[1]).group(1)
        link_csrf = await csrf_of(client, issued)  # a download page's token is not enough
        results = []
        for csrf, headers in (("", SAME_ORIGIN), ("1.x", SAME_ORIGIN), (link_csrf, SAME_ORIGIN),
                              (page_csrf, {"Origin": "https://evil.example"}),
                              (page_csrf, {"Referer": "https://evil.example/page"})):
            response, body = await manage_post(client, token, action, data, headers, csrf)
            results.append((response.status, "管理ページを開き直して" in body))
        return results

    results = harness.run(scenario)

    assert results == [(403, True)] * 5
    assert harness.link(issued).state == "active"
    assert harness.db.transfer(issued.transfer_id).expires_at == harness.clock() + timedelta(
        days=7)
    reasons = [e.detail["reason"] for e in harness.events("manage.refused")]
    assert reasons == ["csrf_missing", "csrf_invalid", "csrf_invalid", "cross_site",
                       "cross_site"]
    assert harness.events("link.revoked") == harness.events("transfer.extended") == []


def test_management_responses_carry_the_security_headers(harness):
    token, _ = harness.controlled()
    response = harness.run(lambda c: c.get(f"/m/{token}"))
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


# -- download notices ---------------------------------------------------------------------


TWO_FILES = [(JA_ZIP, b"PK\x05\x06" + bytes(18)), ("仕様書.pdf", b"%PDF-1.4 test")]


@pytest.mark.parametrize("mode, expected", [
    ("never", []),
    ("first-download", [(JA_ZIP, True)]),
    ("every-download", [(JA_ZIP, True), (None, False), ("仕様書.pdf", False)]),
])
def test_download_notices_follow_the_senders_choice(harness, mode, expected):
    _token, (issued,) = harness.controlled(TWO_FILES, notify_sender=mode)

    async def scenario(client):
        assert await download(client, issued, issued.files[0].id) == 200
        harness.clock.advance(minutes=1)
        assert await download(client, issued, "all") == 200
        harness.clock.advance(minutes=1)
        assert await download(client, issued, issued.files[1].id) == 200

    harness.run(scenario)

    notices = harness.items("download-notice")
    assert [(n.payload["file"], n.payload["first"]) for n in notices] == expected
    assert len(harness.wakes) == len(expected)
    for number, notice in enumerate(notices):
        at = harness.clock() - timedelta(minutes=2 - number)
        assert notice.payload == {"recipient": RECIPIENT, "file": notice.payload["file"],
                                  "at": at.isoformat(), "first": number == 0}
        assert (notice.link_id, notice.transfer_id) == (issued.link_id, issued.transfer_id)
        assert notice.state == "pending" and notice.due_at == at and notice.sealed is None


def test_first_download_notice_is_per_link_and_committed_with_the_download(harness):
    _token, (tanaka, suzuki) = harness.controlled(notify_sender="first-download",
                                                  recipients=(RECIPIENT, OTHER))

    async def scenario(client):
        for link in (tanaka, tanaka, suzuki):
            assert await download(client, link) == 200
            harness.clock.advance(seconds=1)

    harness.run(scenario)

    notices = harness.items("download-notice")
    assert [n.payload["recipient"] for n in notices] == [RECIPIENT, OTHER]
    downloads = harness.events("download")
    assert [d.at for d in downloads[::2]] == [n.created_at for n in notices]


def test_refused_download_queues_no_notice(harness):
    _token, (issued,) = harness.controlled(notify_sender="every-download", max_downloads=1)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        statuses = []
        for _ in range(2):
            response = await client.post(f"{issued.path}/f/{issued.files[0].id}",
                                         data={"csrf": csrf}, headers=SAME_ORIGIN)
            await response.read()
            statuses.append(response.status)
        return statuses

    assert harness.run(scenario) == [200, 410]
    assert len(harness.items("download-notice")) == 1 and len(harness.wakes) == 1


def test_a_failure_on_the_management_page_logs_the_route_never_the_token(harness, caplog):
    token, _ = harness.controlled()

    def broken(transfer_id):
        raise RuntimeError("store trouble")

    harness.controls.download_history = broken

    status, body = harness.run(lambda c: manage_page(c, token))

    assert status == 500 and "store trouble" not in body and "Traceback" not in body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /m/{token} failed" in logged and token not in logged


def test_management_post_marked_cross_site_by_the_browser_is_refused(harness):
    token, (tanaka,) = harness.controlled()

    async def scenario(client):
        response, _ = await manage_post(client, token, "revoke", {"link": "all"},
                                        headers={**SAME_ORIGIN, "Sec-Fetch-Site": "cross-site"})
        return response.status

    assert harness.run(scenario) == 403
    assert harness.events("link.revoked") == []


def test_guessing_management_tokens_is_throttled_with_the_download_links(harness):
    token, (tanaka,) = harness.controlled()

    async def scenario(client):
        misses = [(await client.get(f"/m/{'x' * 32}{n:04d}")).status for n in range(30)]
        misses += [(await client.get(f"/d/{'y' * 32}{n:04d}")).status for n in range(20)]
        throttled = await client.get(f"/m/{token}")
        return misses, throttled.status, throttled.headers.get("Retry-After")

    misses, status, retry_after = harness.run(scenario)
    assert misses == [404] * 50, "one budget of 50 misses per client for /m/ and /d/ together"
    assert status == 429 and int(retry_after) > 0, "then even a real token waits"
