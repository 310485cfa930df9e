"""Who may relay, and AUTH guessing throttled per client (IPv4 address or IPv6 /64)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope, LoginPassword, Session

from gateway.config import ConfigError, build_config
from gateway.smtp import access
from gateway.smtp.access import (
    AUTH_FAILED_REPLY,
    AUTH_LOCKED_REPLY,
    AuthFailureThrottle,
    PasswordFileAuthenticator,
    RelayAccess,
    client_key,
    peer_ip,
)
from gateway.store.db import Database
from gateway.store.passwords import hash_password
from gateway.store.throttles import ThrottleStore
from tests.support.clock import FakeClock

WINDOW = timedelta(minutes=10)


@pytest.fixture
def throttles(tmp_path: Path) -> Iterator[ThrottleStore]:
    """Where the throttles count (the metadata store every worker shares)."""
    with Database(tmp_path / "gateway.sqlite3") as db:
        yield ThrottleStore(db)


def throttle(store: ThrottleStore, max_failures: int, clock: FakeClock,
             scope: str = access.CLIENT_SCOPE) -> AuthFailureThrottle:
    return AuthFailureThrottle(store, scope, max_failures, WINDOW, clock)


def authenticator(users: dict[str, str], store: ThrottleStore, max_failures: int = 5,
                  clock: FakeClock | None = None) -> PasswordFileAuthenticator:
    clock = clock or FakeClock()
    return PasswordFileAuthenticator(
        users, throttle(store, max_failures, clock),
        throttle(store, 10, clock, scope=access.ACCOUNT_SCOPE),
    )


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return {"scanner": hash_password("correct horse")}


def _session(host: str) -> Session:
    session = Session(loop=None)
    session.peer = (host, 40000)
    return session


def _try(authenticator, host: str, password: str, login: str = "scanner"):
    """One AUTH, awaited as GatewaySMTP awaits it (the check runs in a worker thread)."""
    credentials = LoginPassword(login.encode(), password.encode())
    return asyncio.run(authenticator(None, _session(host), Envelope(), "PLAIN", credentials))


def test_defaults_are_five_failures_in_ten_minutes_and_config_can_change_them():
    assert build_config({}, environ={}).smtp.auth_max_failures == 5
    assert build_config({}, environ={}).smtp.auth_failure_window == WINDOW
    smtp = build_config({"smtp": {"auth_max_failures": 3, "auth_failure_window": "90s"}}, environ={}).smtp
    assert (smtp.auth_max_failures, smtp.auth_failure_window) == (3, timedelta(seconds=90))
    with pytest.raises(ConfigError, match="auth_max_failures"):
        build_config({"smtp": {"auth_max_failures": 0}}, environ={})
    with pytest.raises(ConfigError, match="auth_failure_window"):
        build_config({"smtp": {"auth_failure_window": "0s"}}, environ={})


def test_a_client_is_locked_at_the_nth_failure_not_before(throttles):
    clients = throttle(throttles, 3, FakeClock())
    clients.record_failure("192.0.2.7")
    clients.record_failure("192.0.2.7")
    assert not clients.locked("192.0.2.7")
    clients.record_failure("192.0.2.7")
    assert clients.locked("192.0.2.7")
    assert not clients.locked("192.0.2.8")  # per client, not global


def test_the_lock_ends_when_the_window_has_passed_since_the_last_failure(throttles):
    clock = FakeClock()
    clients = throttle(throttles, 2, clock)
    clients.record_failure("192.0.2.7")
    clock.advance(minutes=4)
    clients.record_failure("192.0.2.7")
    clock.advance(minutes=9, seconds=59)
    assert clients.locked("192.0.2.7")
    clock.advance(seconds=1)
    assert not clients.locked("192.0.2.7")
    clients.record_failure("192.0.2.7")  # a clean slate: one failure is not a lock again
    assert not clients.locked("192.0.2.7")


def test_failures_older_than_the_window_no_longer_count(throttles):
    clock = FakeClock()
    clients = throttle(throttles, 2, clock)
    clients.record_failure("192.0.2.7")
    clock.advance(minutes=10)
    clients.record_failure("192.0.2.7")
    assert not clients.locked("192.0.2.7")


def test_ipv6_clients_count_per_64_and_ipv4_mapped_as_ipv4():
    assert client_key(("2001:db8:1:2::10", 1, 0, 0)) == client_key(("2001:db8:1:2:ffff::1", 1, 0, 0))
    assert client_key(("2001:db8:1:2::10", 1)) != client_key(("2001:db8:1:3::10", 1))
    assert client_key(("::ffff:192.0.2.7", 1)) == "192.0.2.7"
    assert client_key(("192.0.2.7", 1)) != client_key(("192.0.2.8", 1))


def test_wrong_password_is_535_and_correct_password_succeeds(users, throttles):
    checker = authenticator(users, throttles)
    failed = _try(checker, "192.0.2.7", "wrong")
    assert (failed.success, failed.message) == (False, AUTH_FAILED_REPLY)
    assert _try(checker, "192.0.2.7", "correct horse").success
    unknown = _try(checker, "192.0.2.7", "correct horse", login="nobody")
    assert not unknown.success


def test_a_locked_client_is_refused_421_even_with_the_right_password_until_the_window_passes(
        users, throttles):
    clock = FakeClock()
    checker = authenticator(users, throttles, max_failures=2, clock=clock)
    _try(checker, "192.0.2.7", "guess 1")
    _try(checker, "192.0.2.7", "guess 2")
    locked = _try(checker, "192.0.2.7", "correct horse")
    assert (locked.success, locked.message) == (False, AUTH_LOCKED_REPLY)
    assert AUTH_LOCKED_REPLY.startswith("421 4.7.0")
    assert _try(checker, "192.0.2.99", "correct horse").success  # others are not affected
    clock.advance(minutes=10)
    assert _try(checker, "192.0.2.7", "correct horse").success


def test_relay_is_allowed_by_network_or_authentication_only():
    relay = RelayAccess([ipaddress.ip_network("192.0.2.0/24")])
    assert relay.client_allowed(("192.0.2.9", 25))
    assert relay.client_allowed(("::ffff:192.0.2.9", 25, 0, 0))
    assert not relay.client_allowed(("198.51.100.1", 25))
    outsider, insider = _session("198.51.100.1"), _session("192.0.2.9")
    assert relay.may_relay(insider) and not relay.may_relay(outsider)
    outsider.authenticated = True
    assert relay.may_relay(outsider)


@pytest.mark.parametrize("peer", [None, "", ("not an address", 1), ("192.0.2.1\r\nX", 1), ()])
def test_odd_peers_are_not_allowed_and_do_not_raise(peer):
    assert peer_ip(peer) is None
    assert not RelayAccess([ipaddress.ip_network("0.0.0.0/0")]).client_allowed(peer)
    assert isinstance(client_key(peer), str)


def test_an_unknown_user_costs_the_same_scrypt_as_a_wrong_password(users, throttles, monkeypatch):
    """Counted, not timed: the time taken must not tell which user names exist."""
    checker = authenticator(users, throttles)
    checked: list[str] = []
    real = access.verify_password
    monkeypatch.setattr(access, "verify_password",
                        lambda pw, stored: checked.append(stored) or real(pw, stored))
    assert not _try(checker, "192.0.2.1", "wrong", login="scanner").success
    assert not _try(checker, "192.0.2.2", "wrong", login="nobody").success
    assert len(checked) == 2 and all(stored.startswith("scrypt$n=") for stored in checked)


def test_attempts_still_being_checked_count_against_the_limit_until_they_end(throttles):
    """The check runs off the event loop, so one client's sessions can overlap: no burst of
    parallel attempts may get more tries than the limit."""
    clients = throttle(throttles, 2, FakeClock())
    assert clients.admit("192.0.2.7") and clients.admit("192.0.2.7")
    assert not clients.admit("192.0.2.7")  # two in flight: a third waits for their outcome
    clients.settle("192.0.2.7", failed=False)
    assert clients.admit("192.0.2.7")  # one ended well: its place is free again
    clients.settle("192.0.2.7", failed=True)
    clients.settle("192.0.2.7", failed=True)
    assert clients.locked("192.0.2.7") and not clients.admit("192.0.2.7")
