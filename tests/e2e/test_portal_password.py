"""Download passwords: the form, the signed session cookie, lock-out after wrong tries."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.portal_harness import (
    CSRF_FIELD,
    RECIPIENT,
    PortalHarness,
    csrf_of,
    open_harness,
    set_cookies,
)
from tests.support.running import PUBLIC_URL


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[PortalHarness]:
    yield from open_harness(tmp_path)


PASSWORD = "Qm7kV2p9Lx4A"
SAME_ORIGIN = {"Origin": PUBLIC_URL}


async def try_password(client, issued, password: str, csrf: str | None = None):
    csrf = csrf if csrf is not None else await csrf_of(client, issued)
    response = await client.post(f"{issued.path}/password", allow_redirects=False,
                                 data={"csrf": csrf, "password": password}, headers=SAME_ORIGIN)
    return response, await response.text()


def session_header(response) -> str:
    cookie = set_cookies(response)["ppap_session"]
    return f"ppap_session={cookie.value}"


async def download_with(client, issued, cookie: str = "") -> int:
    csrf = await csrf_of(client, issued, cookie)
    response = await client.post(f"{issued.path}/f/{issued.files[0].id}", data={"csrf": csrf},
                                 headers={**SAME_ORIGIN, **({"Cookie": cookie} if cookie else {})})
    await response.read()
    return response.status


def test_protected_link_shows_a_password_form_and_refuses_downloads_without_a_session(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        page = await client.get(issued.path)
        return await page.text(), await download_with(client, issued)

    body, status = harness.run(scenario)

    assert f'action="{issued.path}/password"' in body and 'type="password"' in body
    assert f"{issued.path}/f/" not in body  # no download buttons yet
    assert status == 403
    assert harness.link(issued).download_count == 0
    assert harness.events()[-1].detail["reason"] == "password_required"


def test_correct_password_grants_a_session_cookie_for_that_link_only(harness):
    mine, other = harness.add_transfer([("a.zip", b"PK\x05\x06" + bytes(18))],
                                       password=PASSWORD, recipients=(RECIPIENT, "b@x.example"))

    async def scenario(client):
        response, _ = await try_password(client, mine, PASSWORD)
        cookie = session_header(response)
        page = await (await client.get(mine.path, headers={"Cookie": cookie})).text()
        return (response, page, await download_with(client, mine, cookie),
                await download_with(client, other, cookie))

    response, page, mine_status, other_status = harness.run(scenario)

    assert response.status == 303 and response.headers["Location"] == mine.path
    cookie = set_cookies(response)["ppap_session"]
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == mine.path and cookie["max-age"] == "1800"
    assert f"{mine.path}/f/" in page and 'type="password"' not in page
    assert (mine_status, other_status) == (200, 403)
    assert harness.link(mine).download_count == 1 and harness.link(other).download_count == 0
    assert "password.accepted" in [e.kind for e in harness.events()]


def test_session_ends_after_its_lifetime(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        cookie = session_header((await try_password(client, issued, PASSWORD))[0])
        harness.clock.advance(minutes=29)
        fresh = await download_with(client, issued, cookie)
        harness.clock.advance(minutes=2)
        return fresh, await download_with(client, issued, cookie)

    assert harness.run(scenario) == (200, 403)


def test_forged_or_tampered_session_cookie_is_refused(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        cookie = session_header((await try_password(client, issued, PASSWORD))[0])
        stamp, mac = cookie.split("=", 1)[1].split(".")
        longer = f"ppap_session={int(stamp) + 86400}.{mac}"
        return [await download_with(client, issued, c)
                for c in (longer, "ppap_session=99999999999.x", "ppap_session=")]

    assert harness.run(scenario) == [403, 403, 403]


def test_five_wrong_passwords_lock_the_link_for_fifteen_minutes(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        results = []
        for attempt in range(5):
            response, body = await try_password(client, issued, f"wrong-{attempt}")
            results.append((response.status, body))
        # A locked page has no form; a page opened earlier still has a token to send.
        csrf = CSRF_FIELD.search(results[0][1]).group(1)
        locked_right = await try_password(client, issued, PASSWORD, csrf)
        harness.clock.advance(minutes=14, seconds=59)
        still_locked = await try_password(client, issued, PASSWORD, csrf)
        harness.clock.advance(seconds=1)
        after = await try_password(client, issued, PASSWORD)  # the page offers the form again
        return results, locked_right, still_locked, after

    results, locked_right, still_locked, after = harness.run(scenario)

    assert [status for status, _ in results] == [403, 403, 403, 403, 429]
    assert "あと 4 回試せます" in results[0][1] and "あと 1 回試せます" in results[3][1]
    # 00:12:40 UTC + 15 min, in Tokyo
    assert "2026年11月26日(木) 09:27 JST まで入力を受け付けません" in results[4][1]
    assert 'type="password"' not in results[4][1]
    assert locked_right[0].status == 429 and locked_right[0].headers["Retry-After"] == "900"
    assert still_locked[0].status == 429
    assert after[0].status == 303 and "ppap_session" in set_cookies(after[0])
    kinds = [e.kind for e in harness.events()]
    assert kinds.count("password.failed") == 5 and kinds.count("password.locked") == 1
    assert kinds.count("password.accepted") == 1
    locked = harness.events("password.locked")[0]
    assert locked.detail["locked_until"] == "2026-11-26T00:27:40+00:00"
    assert ("password_locked", {}) in harness.hook_calls


def test_a_correct_password_resets_the_count_of_wrong_ones(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        for attempt in range(4):
            await try_password(client, issued, f"wrong-{attempt}")
        await try_password(client, issued, PASSWORD)
        return (await try_password(client, issued, "wrong-again"))[1]

    assert "あと 4 回試せます" in harness.run(scenario)


def test_password_form_needs_csrf_and_same_origin(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        no_token = (await try_password(client, issued, PASSWORD, csrf=""))[0].status
        csrf = await csrf_of(client, issued)
        cross = await client.post(f"{issued.path}/password", data={"csrf": csrf,
                                  "password": PASSWORD}, headers={"Origin": "https://evil.example"})
        await cross.read()
        return no_token, cross.status, set_cookies(cross)

    no_token, cross, cookies = harness.run(scenario)

    assert (no_token, cross) == (403, 403) and "ppap_session" not in cookies
    assert harness.db.password_guard(issued.link_id).failures == 0  # not even counted


def test_passwords_never_reach_the_events(harness):
    issued = harness.add_one(password=PASSWORD)

    async def scenario(client):
        for typed in ("guess-one-Zx9", PASSWORD):
            await try_password(client, issued, typed)

    harness.run(scenario)

    recorded = json.dumps([e.detail for e in harness.events()], ensure_ascii=False)
    assert "guess-one-Zx9" not in recorded and PASSWORD not in recorded
    assert len(harness.events()) == 2


def test_unprotected_link_redirects_a_password_post_to_its_page(harness):
    issued = harness.add_one()

    async def scenario(client):
        csrf = CSRF_FIELD.search(await (await client.get(issued.path)).text()).group(1)
        return (await try_password(client, issued, "x", csrf))[0]

    response = harness.run(scenario)
    assert response.status == 303 and response.headers["Location"] == issued.path


def test_lockout_survives_while_the_clock_has_not_moved_past_it(harness):
    issued = harness.add_one(password=PASSWORD)
    now = harness.clock()
    for _ in range(5):
        assert harness.db.reserve_password_attempt(issued.link_id, now, 5)
        harness.db.settle_password_attempt(issued.link_id, False, now, 5, timedelta(minutes=15))

    status, body = harness.run(lambda c: _landing(c, issued))

    assert status == 200 and 'type="password"' not in body
    assert re.search(r"09:27 JST まで", body)


async def _landing(client, issued):
    response = await client.get(issued.path)
    return response.status, await response.text()
