"""The portal across a master-key rotation's rolling restart: one portal still on the old secret,
one on the new secret with the old one retired, both over one store (as two nodes, or a worker
before and after its restart). What a visitor got from the first (a page's CSRF token, a mailed
code, the password and "verified" cookies) still works on the second; once the old secret is
no longer given, none of it does."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import BUNDLED_TEMPLATES
from gateway.store.crypto import open_small
from gateway.web import build_portal_app
from tests.support.portal_harness import (
    MASTER_KEY,
    SAME_ORIGIN,
    SECRET,
    TOKYO,
    ChannelHarness,
    Issued,
    csrf_of,
    download,
    open_channel_harness,
    set_cookies,
)

NEW_SECRET = hashlib.sha256(b"portal secret after the rotation").digest()
PASSWORD = "Qm7kV2p9Lx4A"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ChannelHarness]:
    yield from open_channel_harness(tmp_path)


def rotated_app(harness: ChannelHarness, retired: tuple[bytes, ...]):
    return build_portal_app(
        settings=harness.settings, db=harness.db, blobs=harness.blobs,
        templates_dir=BUNDLED_TEMPLATES, timezone=TOKYO, secret=NEW_SECRET,
        retired_secrets=retired, clock=harness.clock, outbox=harness.outbox,
        controls=harness.controls, seal=harness.seal, wake_outbox=lambda: None,
    )


def before_and_after(harness: ChannelHarness, scenario, retired: tuple[bytes, ...] = (SECRET,)):
    """Run `scenario(before, after)`: clients of the old portal and of the rotated one."""
    async def main():
        jar = aiohttp.DummyCookieJar
        async with TestClient(TestServer(harness.app()), cookie_jar=jar()) as before, \
                TestClient(TestServer(rotated_app(harness, retired)), cookie_jar=jar()) as after:
            return await scenario(before, after)

    return asyncio.run(main())


async def post(client, issued: Issued, action: str, form: dict):
    response = await client.post(f"{issued.path}{action}", data=form, headers=SAME_ORIGIN,
                                 allow_redirects=False)
    await response.read()
    return response


def mailed_code(harness: ChannelHarness) -> str:
    item = harness.items("otp")[-1]
    return json.loads(open_small(MASTER_KEY, item.id.encode(), item.sealed))["code"]


def cookie(response, name: str) -> str:
    return f"{name}={set_cookies(response)[name].value}"


async def visit_before(before, harness: ChannelHarness, coded: Issued, protected: Issued):
    """On the old portal: a code asked for (its form's token kept), a code typed (the verified
    cookie), a password given (the session cookie)."""
    csrf = await csrf_of(before, coded)
    assert (await post(before, coded, "/otp", {"csrf": csrf})).status == 303
    code = mailed_code(harness)
    verified = await post(before, coded, "/otp/verify", {"csrf": csrf, "code": code})
    harness.clock.advance(seconds=harness.settings.otp_resend_interval.total_seconds())
    assert (await post(before, coded, "/otp", {"csrf": csrf})).status == 303  # a second code
    session = await post(before, protected, "/password",
                         {"csrf": await csrf_of(before, protected), "password": PASSWORD})
    return csrf, cookie(verified, "ppap_verified"), cookie(session, "ppap_session")


def links(harness: ChannelHarness) -> tuple[Issued, Issued]:
    coded = harness.controlled(verify_recipient=True)[1][0]
    protected = harness.add_one(password=PASSWORD)
    return coded, protected


def test_what_the_old_secret_signed_still_works_while_it_is_retired(harness):
    coded, protected = links(harness)

    async def scenario(before, after):
        csrf, verified, session = await visit_before(before, harness, coded, protected)
        typed = await post(after, coded, "/otp/verify",  # the old page's token, the old code
                           {"csrf": csrf, "code": mailed_code(harness)})
        return (typed.status, await download(after, coded, cookie=cookie(typed, "ppap_verified")),
                await download(after, coded, cookie=verified),
                await download(after, protected, cookie=session))

    assert before_and_after(harness, scenario) == (303, 200, 200, 200)


def test_once_the_old_secret_is_gone_nothing_it_signed_works(harness):
    coded, protected = links(harness)

    async def scenario(before, after):
        csrf, verified, session = await visit_before(before, harness, coded, protected)
        typed = await post(after, coded, "/otp/verify",
                           {"csrf": await csrf_of(after, coded), "code": mailed_code(harness)})
        old_form = await post(after, coded, "/otp", {"csrf": csrf})
        return (typed.status, "ppap_verified" in set_cookies(typed), old_form.status,
                await download(after, coded, cookie=verified),
                await download(after, protected, cookie=session))

    _status, verified, old_form, coded_status, protected_status = before_and_after(
        harness, scenario, retired=())
    assert not verified, "a code MACed under the old secret no longer matches"
    assert (old_form, coded_status, protected_status) == (403, 403, 403)
