"""Who may relay through us: clients in `allowed_clients`, or clients that authenticated over TLS.

Never an open relay: anything not allowed is refused at RCPT with 5.7.1, whatever the address
looks like (`%`, source routes, quoted local parts). Password guessing is throttled per client
and, so that guesses spread over many addresses count together, per account name; the scrypt
check runs in a worker thread, so an AUTH never holds the event loop (and the other sessions).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.store.passwords import hash_password, verify_password

log = logging.getLogger("gateway.smtp")


def peer_ip(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = peer[0] if isinstance(peer, (tuple, list)) and peer else peer
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class RelayAccess:
    def __init__(self, allowed_networks: Iterable):
        self._networks = tuple(allowed_networks)

    def client_allowed(self, peer: object) -> bool:
        address = peer_ip(peer)
        return address is not None and any(address in net for net in self._networks)

    def may_relay(self, session) -> bool:
        return bool(getattr(session, "authenticated", False)) or self.client_allowed(session.peer)


def load_users(path: Path) -> dict[str, str]:
    """`user:scrypt-hash` lines, as `ppap-gateway hash-password` prints them; # comments."""
    users: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, _, hashed = line.partition(":")
            users[name.strip()] = hashed.strip()
    return users


# Past this many tracked clients the oldest entry is forgotten: memory stays bounded when an
# attacker rotates addresses (an IPv6 /64 counts as one client, so rotating inside it does not help).
MAX_TRACKED_CLIENTS = 10_000
AUTH_LOCKED_REPLY = "421 4.7.0 Too many failed authentication attempts, closing connection"
AUTH_FAILED_REPLY = "535 5.7.8 Authentication credentials invalid"
# RFC 4954's "temporary authentication failure": for a locked account name (the same for every
# name, known or not), and for a client whose attempts still being checked hold its last tries.
AUTH_TRY_LATER_REPLY = "454 4.7.0 Temporary authentication failure, try again later"
# Account names longer than this are counted by their first characters (memory stays bounded).
_MAX_ACCOUNT_KEY = 256
# scrypt checks running at once (each takes ~100 ms of a core and 16 MiB); more wait their turn.
MAX_CONCURRENT_CHECKS = 2


def client_key(peer: object) -> str:
    """Whose failures count together: the IPv4 address, or the IPv6 /64 (one site's prefix)."""
    address = peer_ip(peer)
    if address is None:
        return "unknown"  # not an IP peer (never seen on TCP): such clients share one count
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(login: bytes) -> str:
    """Whose failures count together across clients: the account name as typed (bounded)."""
    return login[:_MAX_ACCOUNT_KEY].decode("utf-8", "replace")


@dataclass
class _Failures:
    times: deque[datetime] = field(default_factory=deque)
    locked_until: datetime | None = None


class AuthFailureThrottle:
    """Counts failed AUTH attempts per key (a client, or an account name) in a sliding window
    and locks a key that has `max_failures` of them until `window` has passed since the last.

    The password check runs off the event loop, so attempts overlap: `admit` counts each
    attempt in flight as a failure until `settle` says how it ended, so that no burst of
    parallel sessions gets more tries than the limit."""

    def __init__(self, max_failures: int, window: timedelta, clock: Callable[[], datetime]):
        if max_failures < 1 or window <= timedelta(0):
            raise ValueError("max_failures must be ≥ 1 and window longer than zero")
        self._max_failures = max_failures
        self._window = window
        self._clock = clock
        self._clients: dict[str, _Failures] = {}
        self._in_flight: dict[str, int] = {}

    def __len__(self) -> int:
        """How many clients are remembered now (bounded by MAX_TRACKED_CLIENTS)."""
        return len(self._clients)

    def locked(self, key: str) -> bool:
        entry = self._clients.get(key)
        if entry is None or entry.locked_until is None:
            return False
        if self._clock() < entry.locked_until:
            return True
        del self._clients[key]  # the lock has run out: a clean slate
        return False

    def admit(self, key: str) -> bool:
        """Whether one more attempt may be checked now (then settle it); False when the key
        is locked, or its failures and the attempts in flight already reach the limit."""
        if self.locked(key):
            return False
        entry = self._clients.get(key)
        recent = 0
        if entry is not None:
            since = self._clock() - self._window
            recent = sum(1 for at in entry.times if at > since)
        in_flight = self._in_flight.get(key, 0)
        if recent + in_flight >= self._max_failures:
            return False
        self._in_flight[key] = in_flight + 1
        return True

    def settle(self, key: str, failed: bool) -> None:
        """An admitted attempt has ended; a failure is recorded."""
        left = self._in_flight.pop(key, 1) - 1
        if left > 0:
            self._in_flight[key] = left
        if failed:
            self.record_failure(key)

    def record_failure(self, key: str) -> None:
        now = self._clock()
        entry = self._clients.pop(key, None) or _Failures()
        while entry.times and entry.times[0] <= now - self._window:
            entry.times.popleft()
        entry.times.append(now)
        if len(entry.times) >= self._max_failures:
            entry.times.clear()
            entry.locked_until = now + self._window
        self._forget_oldest_if_full()
        self._clients[key] = entry  # re-inserted: dict order is least recently failed first

    def _forget_oldest_if_full(self) -> None:
        while len(self._clients) >= MAX_TRACKED_CLIENTS:
            del self._clients[next(iter(self._clients))]


def _close_after_reply(server: Any) -> None:
    """Hang up once the reply aiosmtpd is about to push has been written.

    The authenticator runs synchronously just before smtp_AUTH pushes its reply; closing on the
    next loop turn lets that reply (written without waiting) go out first.
    """
    transport = getattr(server, "transport", None)
    loop = getattr(server, "loop", None)
    if transport is not None and loop is not None:
        loop.call_soon(transport.close)


class PasswordFileAuthenticator:
    """aiosmtpd authenticator for LOGIN/PLAIN against the users file (checked in constant time).

    A coroutine: GatewaySMTP (server.py) awaits it, and scrypt runs in a worker thread. A
    client locked by its throttle is refused with 421 and disconnected, an account name locked
    by its own (failures from all clients together) with 454, both without the password being
    checked, so guessing costs the attacker time and us no scrypt work. Unknown names are
    counted and refused exactly as known ones: the answers do not tell which names exist.
    """

    def __init__(self, users: dict[str, str], throttle: AuthFailureThrottle | None = None,
                 account_throttle: AuthFailureThrottle | None = None):
        self._users = users
        self._decoy = hash_password(secrets.token_urlsafe(16))  # checked for unknown names
        if throttle is None:
            throttle = AuthFailureThrottle(5, timedelta(minutes=10), _utc_now)
        if account_throttle is None:
            account_throttle = AuthFailureThrottle(10, timedelta(minutes=15), _utc_now)
        self._throttle = throttle
        self._accounts = account_throttle
        self._checks: asyncio.Semaphore | None = None  # made in the loop that first checks

    async def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        key = client_key(session.peer)
        if self._throttle.locked(key):
            log.warning("AUTH refused: client %s is locked after failed attempts", key)
            _close_after_reply(server)
            return AuthResult(success=False, handled=False, message=AUTH_LOCKED_REPLY)
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        account = account_key(auth_data.login)
        if not self._throttle.admit(key):
            # Its earlier attempts, still being checked, may use up the client's last tries.
            return AuthResult(success=False, handled=False, message=AUTH_TRY_LATER_REPLY)
        if not self._accounts.admit(account):
            self._throttle.settle(key, failed=False)
            log.warning("AUTH refused: account %r is locked after failed attempts", account)
            return AuthResult(success=False, handled=False, message=AUTH_TRY_LATER_REPLY)
        matches = False
        try:
            matches = await self._check(auth_data)
        finally:
            self._accounts.settle(account, failed=not matches)
            self._throttle.settle(key, failed=not matches)
        if not matches:
            log.info("AUTH failed for client %s", key)
            return AuthResult(success=False, handled=False, message=AUTH_FAILED_REPLY)
        return AuthResult(success=True, auth_data=auth_data.login.decode("utf-8", "replace"))

    async def _check(self, auth_data: LoginPassword) -> bool:
        """Whether the password is the name's, in a worker thread (scrypt takes ~100 ms)."""
        name = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        stored = self._users.get(name)
        if self._checks is None:
            self._checks = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        async with self._checks:
            # An unknown name costs the same scrypt as a wrong password: the time taken must
            # not tell which user names exist.
            matches = await asyncio.to_thread(
                verify_password, password, stored if stored is not None else self._decoy
            )
        return stored is not None and matches


def _utc_now() -> datetime:
    return datetime.now(UTC)
