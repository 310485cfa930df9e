"""Recipient verification: a one-time code mailed (through the outbox) to the link's recipient,
its limits (tries, lifetime, resend interval, per client), and the cookie it earns."""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from gateway.config import PortalSettings
from gateway.store.crypto import open_small
from tests.support.portal_harness import (
    CSRF_FIELD,
    JA_ZIP,
    MASTER_KEY,
    OTHER,
    RECIPIENT,
    SAME_ORIGIN,
    ChannelHarness,
    Issued,
    csrf_of,
    download,
    open_channel_harness,
    set_cookies,
)
from tests.support.running import PUBLIC_URL

PASSWORD = "Qm7kV2p9Lx4A"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ChannelHarness]:
    yield from open_channel_harness(tmp_path)


def verified_link(harness: ChannelHarness, **options) -> Issued:
    return harness.controlled(verify_recipient=True, **options)[1][0]


async def ask_for_code(client, issued: Issued, headers: dict | None = None,
                       csrf: str | None = None):
    """`csrf`: a token kept from an earlier page (a locked link's page has no form)."""
    csrf = csrf or await csrf_of(client, issued)
    response = await client.post(f"{issued.path}/otp", data={"csrf": csrf},
                                 headers={**SAME_ORIGIN, **(headers or {})},
                                 allow_redirects=False)
    return response, await response.text()


async def type_code(client, issued: Issued, code: str, csrf: str | None = None):
    csrf = csrf or await csrf_of(client, issued)
    response = await client.post(f"{issued.path}/otp/verify", data={"csrf": csrf, "code": code},
                                 headers=SAME_ORIGIN, allow_redirects=False)
    return response, await response.text()


def mailed_code(harness: ChannelHarness) -> str:
    """The code in the newest otp item, opened as the outbox worker would."""
    item = harness.items("otp")[-1]
    return json.loads(open_small(MASTER_KEY, item.id.encode(), item.sealed))["code"]


def cookie_of(response, name: str) -> str:
    return f"{name}={set_cookies(response)[name].value}"


# -- before verification ------------------------------------------------------------------


def test_link_that_needs_verification_offers_only_the_code_form(harness):
    issued = verified_link(harness)

    async def scenario(client):
        page = await (await client.get(issued.path)).text()
        return page, await download(client, issued)

    page, status = harness.run(scenario)

    assert f'action="{issued.path}/otp"' in page and "t****@partner.example.com" in page
    assert RECIPIENT not in page
    assert f"{issued.path}/f/" not in page and JA_ZIP not in page and "お見積りの件" not in page
    assert status == 403
    assert harness.events("download.refused")[-1].detail["reason"] == "verification_required"
    assert harness.link(issued).download_count == 0


def test_link_without_verification_is_unaffected(harness):
    _token, (issued,) = harness.controlled(verify_recipient=False)

    async def scenario(client):
        page = await (await client.get(issued.path)).text()
        response, _ = await ask_for_code(client, issued)
        return page, response, await download(client, issued)

    page, response, status = harness.run(scenario)

    assert f"{issued.path}/f/" in page and "/otp" not in page
    assert response.status == 303 and status == 200
    assert harness.items("otp") == [] and harness.wakes == []


# -- sending a code -------------------------------------------------------------------------


def test_asking_queues_a_sealed_code_for_the_recipient_and_the_right_code_opens_the_files(
    harness,
):
    issued = verified_link(harness)

    async def scenario(client):
        asked, _ = await ask_for_code(client, issued)
        form_page = await (await client.get(issued.path)).text()
        code = mailed_code(harness)
        verified, _ = await type_code(client, issued, code)
        cookie = cookie_of(verified, "ppap_verified")
        page = await (await client.get(issued.path, headers={"Cookie": cookie})).text()
        return asked, form_page, verified, page, await download(client, issued, cookie=cookie)

    asked, form_page, verified, page, status = harness.run(scenario)

    assert asked.status == 303 and asked.headers["Location"] == issued.path
    (item,) = harness.items("otp")
    assert (item.link_id, item.transfer_id) == (issued.link_id, issued.transfer_id)
    assert item.payload == {"minutes": 10} and item.due_at == harness.clock()
    assert item.dedupe_key is None and item.state == "pending"
    assert len(harness.wakes) == 1
    assert f'action="{issued.path}/otp/verify"' in form_page
    sent = "t****@partner.example.com に確認コードを送りました。2026年11月26日(木) 09:22 JST まで有効です。"
    assert sent in form_page
    assert verified.status == 303 and verified.headers["Location"] == issued.path
    cookie = set_cookies(verified)["ppap_verified"]
    assert cookie["path"] == issued.path and cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Strict" and cookie["max-age"] == "1800"
    assert f"{issued.path}/f/" in page and JA_ZIP in page and RECIPIENT in page
    assert status == 200
    kinds = [e.kind for e in harness.events()]
    assert kinds[:2] == ["otp.sent", "otp.verified"] and "download" in kinds
    stored = harness.controls.otp_state(issued.link_id)
    assert stored.code_hash == "" and stored.verified_at == harness.clock()
    assert mailed_code(harness) not in json.dumps([e.detail for e in harness.events()])


def test_code_is_a_six_digit_string_stored_only_as_a_mac(harness):
    issued = verified_link(harness)
    harness.run(lambda c: ask_for_code(c, issued))
    code = mailed_code(harness)
    stored = harness.controls.otp_state(issued.link_id)
    assert len(code) == 6 and code.isdigit()
    assert code not in stored.code_hash and stored.expires_at == harness.clock() + timedelta(
        minutes=10)


def test_full_width_digits_and_spaces_are_accepted(harness):
    issued = verified_link(harness)

    async def scenario(client):
        await ask_for_code(client, issued)
        code = mailed_code(harness)
        wide = " ".join(chr(ord(d) + 0xFEE0) for d in code)  # "１ ２ ３ ..." as typed in Japanese
        return (await type_code(client, issued, wide))[0].status

    assert harness.run(scenario) == 303


def test_cookie_verifies_one_link_only(harness):
    _token, (mine, other) = harness.controlled(verify_recipient=True,
                                               recipients=(RECIPIENT, OTHER))

    async def scenario(client):
        await ask_for_code(client, mine)
        verified, _ = await type_code(client, mine, mailed_code(harness))
        cookie = cookie_of(verified, "ppap_verified")
        forged = f"ppap_verified={cookie.split('=', 1)[1]}"
        return (await download(client, mine, cookie=cookie),
                await download(client, other, cookie=forged))

    assert harness.run(scenario) == (200, 403)


def test_verified_session_ends_after_its_lifetime(harness):
    issued = verified_link(harness)

    async def scenario(client):
        await ask_for_code(client, issued)
        cookie = cookie_of((await type_code(client, issued, mailed_code(harness)))[0],
                           "ppap_verified")
        harness.clock.advance(minutes=31)
        return await download(client, issued, cookie=cookie)

    assert harness.run(scenario) == 403


# -- limits -----------------------------------------------------------------------------


def test_five_wrong_codes_void_the_code_until_a_new_one_is_sent(harness):
    issued = verified_link(harness)

    async def scenario(client):
        await ask_for_code(client, issued)
        code = mailed_code(harness)
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        tries = [await type_code(client, issued, wrong) for _ in range(5)]
        right_too_late, late_page = await type_code(client, issued, code)
        harness.clock.advance(seconds=60)
        await ask_for_code(client, issued)
        fresh, _ = await type_code(client, issued, mailed_code(harness))
        return tries, right_too_late, late_page, fresh

    tries, right_too_late, late_page, fresh = harness.run(scenario)

    assert [r.status for r, _ in tries] == [403] * 5
    assert "あと 4 回試せます" in tries[0][1] and "あと 1 回試せます" in tries[3][1]
    assert "このコードは使えなくなりました" in tries[4][1]
    assert f'action="{issued.path}/otp/verify"' not in tries[4][1]  # only "send a code"
    assert right_too_late.status == 403 and "このコードは使えなくなりました" in late_page
    assert fresh.status == 303 and "ppap_verified" in set_cookies(fresh)
    kinds = [e.kind for e in harness.events()]
    assert kinds.count("otp.failed") == 5 and kinds.count("otp.locked") == 1
    assert ("otp_locked", {}) in harness.hook_calls


def test_expired_code_is_refused(harness):
    issued = verified_link(harness)

    async def scenario(client):
        await ask_for_code(client, issued)
        code = mailed_code(harness)
        harness.clock.advance(minutes=10)
        return await type_code(client, issued, code)

    response, page = harness.run(scenario)

    assert response.status == 403 and "ppap_verified" not in set_cookies(response)
    assert "確認コードの有効期限が切れました" in page
    assert harness.events("otp.refused")[-1].detail["reason"] == "expired"


def test_asking_again_too_soon_is_429_and_a_later_code_replaces_the_first(harness):
    issued = verified_link(harness)

    async def scenario(client):
        await ask_for_code(client, issued)
        first = mailed_code(harness)
        harness.clock.advance(seconds=45)
        too_soon = await ask_for_code(client, issued)
        harness.clock.advance(seconds=15)
        again = await ask_for_code(client, issued)
        old, _ = await type_code(client, issued, first)
        return first, too_soon, again, old

    first, (too_soon, body), (again, _), old = harness.run(scenario)

    assert too_soon.status == 429 and too_soon.headers["Retry-After"] == "15"
    assert "確認コードは 15 秒後に送り直せます。" in body
    assert again.status == 303
    assert [i.state for i in harness.items("otp")] == ["cancelled", "pending"]
    second = mailed_code(harness)
    assert old.status == 403 or first == second
    assert harness.controls.otp_state(issued.link_id).sends == 2
    throttled = harness.events("otp.throttled")
    assert [e.detail["scope"] for e in throttled] == ["link"]
    assert len(harness.wakes) == 2


def test_one_client_network_may_ask_only_so_often_per_hour(harness):
    harness.settings = PortalSettings(public_url=PUBLIC_URL, otp_per_client_per_hour=3,
                                      trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    _token, links = harness.controlled(verify_recipient=True,
                                       recipients=tuple(f"r{n}@x.example" for n in range(5)))
    visitor = {"X-Forwarded-For": "2001:db8:1:2::10"}
    neighbour = {"X-Forwarded-For": "2001:db8:1:2::99"}  # the same /64
    stranger = {"X-Forwarded-For": "198.51.100.7"}

    async def scenario(client):
        statuses = [(await ask_for_code(client, link, visitor))[0].status for link in links[:3]]
        refused, _ = await ask_for_code(client, links[3], neighbour)
        other, _ = await ask_for_code(client, links[3], stranger)
        harness.clock.advance(hours=1)
        later, _ = await ask_for_code(client, links[4], visitor)
        return statuses, refused, other.status, later.status

    statuses, refused, other, later = harness.run(scenario)

    assert statuses == [303, 303, 303]
    assert refused.status == 429 and refused.headers["Retry-After"] == "3600"
    assert (other, later) == (303, 303)
    assert len(harness.items("otp")) == 5
    throttled = harness.events("otp.throttled")
    assert [e.detail["scope"] for e in throttled] == ["client"]
    assert throttled[0].detail["client_ip"] == "2001:db8:1:2::99"


# -- the link's budget, whatever network asks ------------------------------------------------

BEHIND_PROXY = (ipaddress.ip_network("127.0.0.0/8"),)  # the test client is the trusted proxy
LOCKED_JA = "このリンクでは確認コードを使えなくなりました。送信者（somu@city.example.lg.jp）にはお知らせしました。"
LOCKED_EN = "Codes for this link are locked"


def from_network(number: int) -> dict[str, str]:
    """A client on a network of its own (a /64 each): the per-network limit never applies."""
    return {"X-Forwarded-For": f"2001:db8:{number:x}::1"}


async def unlock_codes(client, manage_token: str, link_id: str, with_csrf: bool = True):
    page = await (await client.get(f"/m/{manage_token}")).text()
    csrf = CSRF_FIELD.search(page).group(1) if with_csrf else ""
    response = await client.post(f"/m/{manage_token}/unlock-codes",
                                 data={"csrf": csrf, "link": link_id}, headers=SAME_ORIGIN,
                                 allow_redirects=False)
    return response, page


def test_codes_asked_from_many_networks_lock_the_link_after_its_budget_and_the_sender_is_told_once(
    harness,
):
    harness.settings = PortalSettings(public_url=PUBLIC_URL, trusted_proxies=BEHIND_PROXY)
    issued = verified_link(harness)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        asked = []
        for number in range(12):  # the default budget is 10 codes; each from a new network
            asked.append(await ask_for_code(client, issued, from_network(number), csrf))
            harness.clock.advance(seconds=60)
        last_code = harness.items("otp")[-1]
        typed, _ = await type_code(client, issued, json.loads(
            open_small(MASTER_KEY, last_code.id.encode(), last_code.sealed))["code"], csrf)
        page = await (await client.get(issued.path)).text()
        english = await (await client.get(issued.path, headers={"Accept-Language": "en"})).text()
        return asked, typed, page, english

    asked, typed, page, english = harness.run(scenario)

    assert [r.status for r, _ in asked] == [303] * 10 + [403, 403]
    assert LOCKED_JA in asked[10][1] and LOCKED_JA in page and LOCKED_EN in english
    assert f'action="{issued.path}/otp"' not in page  # no send button while locked
    assert typed.status == 403 and "ppap_verified" not in set_cookies(typed)  # the 10th code is void
    assert len(harness.items("otp")) == 10
    (notice,) = harness.items("otp-locked")
    assert (notice.transfer_id, notice.link_id, notice.state) == (
        issued.transfer_id, issued.link_id, "pending")
    assert notice.payload["reason"] == "sends" and notice.payload["recipient"] == RECIPIENT
    (locked,) = harness.events("otp.link_locked")
    assert locked.detail["reason"] == "sends" and locked.detail["client_ip"] == "2001:db8:a::1"
    assert harness.controls.otp_state(issued.link_id).locked_at == locked.at


def test_wrong_codes_from_many_networks_lock_the_link_after_its_budget(harness):
    harness.settings = PortalSettings(public_url=PUBLIC_URL, trusted_proxies=BEHIND_PROXY)
    issued = verified_link(harness)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        statuses = []
        for round_ in range(5):  # 5 tries per code; the link's budget is 20 wrong tries
            await ask_for_code(client, issued, from_network(round_), csrf)
            harness.clock.advance(seconds=60)
            code = mailed_code(harness)
            wrong = f"{(int(code) + 1) % 10**6:06d}"
            for _ in range(5):
                response, body = await type_code(client, issued, wrong, csrf)
                statuses.append(response.status)
        asked_again, after = await ask_for_code(client, issued, from_network(99), csrf)
        return statuses, body, asked_again, after

    statuses, last_body, asked_again, after = harness.run(scenario)

    assert statuses == [403] * 25
    assert LOCKED_JA in last_body
    assert asked_again.status == 403 and LOCKED_JA in after
    assert len(harness.items("otp")) == 4  # no code for the fifth round: the link was locked
    assert harness.events("otp.failed").__len__() == 20
    (notice,) = harness.items("otp-locked")
    assert notice.payload["reason"] == "failures"
    assert [e.detail["reason"] for e in harness.events("otp.link_locked")] == ["failures"]
    assert harness.controls.otp_state(issued.link_id).total_failures == 20


def test_the_sender_unlocks_codes_on_the_management_page_and_the_budget_starts_again(harness):
    harness.settings = PortalSettings(public_url=PUBLIC_URL, otp_max_sends_per_link=1)
    manage_token, (issued,) = harness.controlled(verify_recipient=True)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        await ask_for_code(client, issued, csrf=csrf)
        harness.clock.advance(seconds=60)
        locked, _ = await ask_for_code(client, issued, csrf=csrf)
        forged, locked_page = await unlock_codes(client, manage_token, issued.link_id,
                                                 with_csrf=False)
        unlocked, _ = await unlock_codes(client, manage_token, issued.link_id)
        after = await (await client.get(f"/m/{manage_token}")).text()
        asked, _ = await ask_for_code(client, issued)
        verified, _ = await type_code(client, issued, mailed_code(harness))
        again, _ = await unlock_codes(client, manage_token, issued.link_id)
        return locked, forged, locked_page, unlocked, after, asked, verified, again

    locked, forged, locked_page, unlocked, after, asked, verified, again = harness.run(scenario)

    assert locked.status == 403
    assert "ロック中" in locked_page and "確認コードのロックを解除する" in locked_page
    assert f'action="/m/{manage_token}/unlock-codes"' in locked_page
    assert forged.status == 403  # no CSRF token: nothing unlocked
    assert unlocked.status == 303 and unlocked.headers["Location"].endswith("?done=codes_unlocked")
    assert "確認コードのロックを解除しました" not in after  # only after the redirect's ?done
    assert "ロック中" not in after and "/unlock-codes" not in after
    assert asked.status == 303 and verified.status == 303
    assert again.status == 303 and again.headers["Location"].endswith("?done=unchanged")
    (event,) = harness.events("otp.link_unlocked")
    assert event.link_id == issued.link_id and event.detail["by"] == "sender"
    assert [e.detail["reason"] for e in harness.events("manage.refused")] == ["csrf_missing"]
    assert len(harness.items("otp-locked")) == 1


def test_a_verified_code_renews_the_links_budget(harness):
    harness.settings = PortalSettings(public_url=PUBLIC_URL, otp_max_sends_per_link=2)
    issued = verified_link(harness)

    async def scenario(client):
        statuses = []
        for _ in range(3):  # two codes and a verification, three times: never locked
            await ask_for_code(client, issued)
            harness.clock.advance(seconds=60)
            statuses.append((await ask_for_code(client, issued))[0].status)
            harness.clock.advance(seconds=60)
            statuses.append((await type_code(client, issued, mailed_code(harness)))[0].status)
        return statuses

    assert harness.run(scenario) == [303, 303] * 3
    assert harness.items("otp-locked") == [] and harness.events("otp.link_locked") == []


def test_code_forms_need_csrf_and_same_origin(harness):
    issued = verified_link(harness)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        results = []
        for path in ("otp", "otp/verify"):
            for data, headers in (({}, SAME_ORIGIN),
                                  ({"csrf": csrf}, {"Origin": "https://evil.example"})):
                response = await client.post(f"{issued.path}/{path}",
                                             data={**data, "code": "000000"}, headers=headers)
                await response.read()
                results.append(response.status)
        return results

    assert harness.run(scenario) == [403, 403, 403, 403]
    assert harness.items("otp") == [] and harness.controls.otp_state(issued.link_id) is None


def test_without_a_sealer_no_code_is_sent_and_the_files_stay_closed(harness):
    harness.seal = None
    issued = verified_link(harness)
    response, body = harness.run(lambda c: ask_for_code(c, issued))
    assert response.status == 503 and "確認コードをお送りできません" in body
    assert harness.items() == []


# -- with a password ------------------------------------------------------------------------


def test_password_and_code_are_both_needed_when_both_apply(harness):
    issued = verified_link(harness, password=PASSWORD)

    async def scenario(client):
        await ask_for_code(client, issued)
        verified = cookie_of((await type_code(client, issued, mailed_code(harness)))[0],
                             "ppap_verified")
        after_code = await (await client.get(issued.path, headers={"Cookie": verified})).text()
        csrf = CSRF_FIELD.search(after_code).group(1)
        password = await client.post(f"{issued.path}/password", allow_redirects=False,
                                     data={"csrf": csrf, "password": PASSWORD},
                                     headers=SAME_ORIGIN)
        session = cookie_of(password, "ppap_session")
        return (after_code, await download(client, issued, cookie=verified),
                await download(client, issued, cookie=session),
                await download(client, issued, cookie=f"{verified}; {session}"))

    after_code, code_only, password_only, both = harness.run(scenario)

    assert 'type="password"' in after_code and f"{issued.path}/f/" not in after_code
    assert (code_only, password_only, both) == (403, 403, 200)
    reasons = [e.detail["reason"] for e in harness.events("download.refused")]
    assert reasons == ["password_required", "verification_required"]


