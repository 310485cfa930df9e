"""The portal's counters and codes on their own, without HTTP: the sliding window and the guess
throttle, the setting that bounds guessing, the Fetch Metadata check, and one-time codes (their
MAC and normalisation, the masked address). Through the portal app: tests/e2e/test_portal_*."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import ConfigError, build_config
from gateway.store.db import Database
from gateway.store.throttles import ThrottleStore
from gateway.web.landing import mask_address
from gateway.web.otp import normalize_code
from gateway.web.ratelimit import GuessThrottle, SlidingWindow, client_key
from gateway.web.security import cross_site, fetched_cross_site, otp_mac
from tests.support.config import PUBLIC_URL

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture
def throttles(tmp_path: Path) -> Iterator[ThrottleStore]:
    """The counters of the throttles, in a store of their own (as every worker shares one)."""
    with Database(tmp_path / "gateway.sqlite3") as db:
        yield ThrottleStore(db)


# -- rate limits (from test_portal_ratelimit) -----------------------------------------------------


def test_retry_after_reports_the_wait_without_counting(throttles):
    window = SlidingWindow(throttles, "test", 2, timedelta(minutes=10))
    assert window.retry_after("a", T0) is None
    window.reserve("a", T0)
    assert window.retry_after("a", T0) is None  # peeking twice costs nothing
    assert window.retry_after("a", T0) is None
    window.reserve("a", T0 + timedelta(minutes=1))
    assert window.retry_after("a", T0 + timedelta(minutes=2)) == timedelta(minutes=8)
    assert window.retry_after("a", T0 + timedelta(minutes=10)) is None


def test_guess_throttle_counts_misses_per_client_network(throttles):
    throttle = GuessThrottle(throttles, 2, timedelta(minutes=10))
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

# -- one-time codes (from test_portal_otp) ------------------------------------------------------


def test_a_code_is_bound_to_its_link():
    secret = bytes(32)
    assert otp_mac(secret, "link-a", "123456") != otp_mac(secret, "link-b", "123456")
    assert otp_mac(secret, "link-a", "123456") == otp_mac(secret, "link-a", "123456")


def test_sliding_window_counts_per_key_and_forgets_after_the_window(throttles):
    start = datetime(2026, 11, 26, tzinfo=UTC)
    window = SlidingWindow(throttles, "test", 2, timedelta(hours=1))
    assert window.reserve("a", start) is None
    assert window.reserve("a", start + timedelta(minutes=10)) is None
    assert window.reserve("a", start + timedelta(minutes=20)) == timedelta(minutes=40)
    window.release("a")  # the 10-minute use did not happen after all
    assert window.reserve("a", start + timedelta(minutes=21)) is None
    assert window.reserve("a", start + timedelta(minutes=60)) is None  # the first has aged out
    for key in ("b", "c"):  # other keys count apart
        assert window.reserve(key, start + timedelta(minutes=60)) is None
    assert window.reserve("a", start + timedelta(minutes=61)) == timedelta(minutes=20)
    assert client_key("2001:db8:1:2::10") == client_key("2001:db8:1:2:ffff::1") \
        == "2001:db8:1:2::/64"
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"


def test_mask_address_and_code_normalisation():
    assert mask_address("tanaka@partner.example.com") == "t****@partner.example.com"
    assert mask_address("x") == "x****"
    assert normalize_code("１２３ ４５６") == "123456" and normalize_code("123-456") == "123456"
    assert normalize_code("12345") is None and normalize_code("1" * 100) is None
    assert normalize_code("12345a") is None
