"""Per-client throttling of link guessing (portal.max_unknown_tokens) and the Fetch Metadata
check: the counting parts alone, then through the real portal app over a real store."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import ConfigError, PortalSettings, build_config
from gateway.web.ratelimit import GuessThrottle, SlidingWindow
from gateway.web.security import cross_site, fetched_cross_site
from tests.support.running import PUBLIC_URL
from tests.unit.test_portal_pages import PortalHarness, csrf_of

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
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


# -- the counters -----------------------------------------------------------------------------


def test_retry_after_reports_the_wait_without_counting():
    window = SlidingWindow(2, timedelta(minutes=10))
    assert window.retry_after("a", T0) is None
    window.reserve("a", T0)
    assert window.retry_after("a", T0) is None  # peeking twice costs nothing
    assert window.retry_after("a", T0) is None
    window.reserve("a", T0 + timedelta(minutes=1))
    assert window.retry_after("a", T0 + timedelta(minutes=2)) == timedelta(minutes=8)
    assert window.retry_after("a", T0 + timedelta(minutes=10)) is None


def test_guess_throttle_counts_misses_per_client_network():
    throttle = GuessThrottle(2, timedelta(minutes=10))
    assert throttle.wait("2001:db8:1:2::1", T0) is None
    assert not throttle.missed("2001:db8:1:2::1", T0)
    assert throttle.missed("2001:db8:1:2::ffff", T0)  # the same /64: its limit is reached
    assert throttle.wait("2001:db8:1:2::42", T0) == timedelta(minutes=10)
    assert throttle.wait("2001:db8:1:3::1", T0) is None  # another /64
    assert throttle.wait("198.51.100.7", T0) is None
    assert throttle.wait("2001:db8:1:2::1", T0 + timedelta(minutes=10)) is None


def test_max_unknown_tokens_is_configurable_and_checked():
    base = {"storage": {"data_dir": "/tmp/unused"}}
    assert build_config(base, (), environ={}).portal.max_unknown_tokens == 50
    changed = build_config({**base, "portal": {"max_unknown_tokens": 7}}, (), environ={})
    assert changed.portal.max_unknown_tokens == 7
    with pytest.raises(ConfigError, match="max_unknown_tokens"):
        build_config({**base, "portal": {"max_unknown_tokens": 0}}, (), environ={})


def test_sec_fetch_site_cross_site_is_cross_site_whatever_origin_says():
    allowed = {PUBLIC_URL}
    assert fetched_cross_site("cross-site") and fetched_cross_site(" Cross-Site ")
    assert not fetched_cross_site("same-origin") and not fetched_cross_site(None)
    assert not fetched_cross_site("same-site")  # left to the Origin check
    assert cross_site("null", None, allowed, fetch_site="cross-site")
    assert cross_site(PUBLIC_URL, None, allowed, fetch_site="cross-site")
    assert not cross_site(PUBLIC_URL, None, allowed, fetch_site="same-origin")


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
