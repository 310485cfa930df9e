"""Per-client throttling of link guessing (portal.max_unknown_tokens) and the Fetch Metadata
check, through the real portal app over a real store (the counting parts alone:
tests/unit/test_portal_limits.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import PortalSettings
from tests.support.portal_harness import PortalHarness, csrf_of
from tests.support.running import PUBLIC_URL

PROXY = {"trusted_proxies": (ipaddress.ip_network("127.0.0.0/8"),)}


def settings(limit: int) -> PortalSettings:
    return PortalSettings(public_url=PUBLIC_URL, max_unknown_tokens=limit, **PROXY)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[PortalHarness]:
    portal = PortalHarness(tmp_path, settings=settings(3))
    yield portal
    portal.close()


def guess() -> str:
    return f"/d/{secrets.token_urlsafe(24)}"


def from_ip(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


# -- through the portal -----------------------------------------------------------------------


def test_unknown_tokens_past_the_limit_get_429_with_retry_after_for_every_link(harness):
    issued = harness.add_one()

    async def scenario(client):
        ip = from_ip("198.51.100.7")
        misses = [(await client.get(guess(), headers=ip)).status for _ in range(3)]
        throttled = await client.get(guess(), headers=ip)
        # A real link too: answering it would tell the guesser which token is real.
        real = await client.get(issued.path, headers=ip)
        other = await client.get(issued.path, headers=from_ip("203.0.113.9"))
        return misses, throttled, await throttled.text(), real.status, other.status

    misses, throttled, body, real, other = harness.run(scenario)

    assert misses == [404, 404, 404]
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "600"
    assert "しばらくお待ちください" in body
    assert real == 429 and other == 200
    assert harness.hook_calls.count(("refusal", {"reason": "guessing"})) == 2
    assert harness.events() == []  # unknown tokens reach no link: nothing to audit


def test_throttle_lifts_as_the_oldest_miss_leaves_the_window(harness):
    async def scenario(client):
        ip = from_ip("198.51.100.7")
        for minute in range(3):
            await client.get(guess(), headers=ip)
            harness.clock.advance(minutes=1)
        waiting = await client.get(guess(), headers=ip)
        harness.clock.advance(minutes=7)  # the first miss is now 10 minutes old
        return waiting.headers["Retry-After"], (await client.get(guess(), headers=ip)).status

    assert harness.run(scenario) == ("420", 404)


def test_opening_a_real_link_many_times_never_throttles(harness):
    issued = harness.add_one()

    async def scenario(client):
        return [(await client.head(issued.path)).status for _ in range(20)] + \
               [(await client.get(issued.path)).status for _ in range(20)]

    assert set(harness.run(scenario)) == {200}
    assert harness.link(issued).download_count == 0


def test_a_burst_of_parallel_guesses_is_counted_in_full(harness):
    issued = harness.add_one()

    async def scenario(client):
        ip = from_ip("198.51.100.7")
        burst = await asyncio.gather(*(client.get(guess(), headers=ip) for _ in range(40)))
        harness.clock.advance(minutes=9, seconds=59)
        later = await client.get(issued.path, headers=ip)
        return {r.status for r in burst}, later.status

    burst, later = harness.run(scenario)

    # Guesses already running when the limit was reached were answered (404 or 429)...
    assert burst <= {404, 429} and 404 in burst
    # ...and every one of them counts: the client waits the whole window.
    assert later == 429


def test_a_real_link_opened_in_parallel_is_never_throttled(harness):
    issued = harness.add_one()

    async def scenario(client):
        ip = from_ip("198.51.100.7")
        replies = await asyncio.gather(*(client.get(issued.path, headers=ip)
                                         for _ in range(60)))
        return {r.status for r in replies}, (await client.get(guess(), headers=ip)).status

    assert harness.run(scenario) == ({200}, 404)


def test_guessing_on_post_routes_counts_too(harness):
    async def scenario(client):
        ip = {**from_ip("198.51.100.7"), "Origin": PUBLIC_URL}
        paths = [f"{guess()}/password", f"{guess()}/f/x", f"{guess()}/all", f"{guess()}/otp"]
        return [(await client.post(p, data={"csrf": "x"}, headers=ip)).status for p in paths]

    assert harness.run(scenario) == [404, 404, 404, 429]


def test_cross_site_fetch_metadata_refuses_a_post_with_a_good_csrf_token(harness):
    issued = harness.add_one()

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        target = f"{issued.path}/f/{issued.files[0].id}"
        refused = await client.post(target, data={"csrf": csrf}, headers={
            "Origin": "null", "Sec-Fetch-Site": "cross-site"})
        served = await client.post(target, data={"csrf": csrf}, headers={
            "Origin": PUBLIC_URL, "Sec-Fetch-Site": "same-origin"})
        await served.read()
        return refused.status, served.status

    assert harness.run(scenario) == (403, 200)
    assert harness.link(issued).download_count == 1
    assert harness.events("download.refused")[0].detail["reason"] == "cross_site"
