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


async def ask_for_code(client, issued: Issued, headers: dict | None = None):
    csrf = await csrf_of(client, issued)
    response = await client.post(f"{issued.path}/otp", data={"csrf": csrf},
                                 headers={**SAME_ORIGIN, **(headers or {})},
                                 allow_redirects=False)
    return response, await response.text()


async def type_code(client, issued: Issued, code: str):
    csrf = await csrf_of(client, issued)
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


