"""Who may relay through us: clients in `allowed_clients`, or clients that authenticated over TLS.

Never an open relay: anything not allowed is refused at RCPT with 5.7.1, whatever the address
looks like (`%`, source routes, quoted local parts). Password guessing is throttled per client
and, so that guesses spread over many addresses count together, per account name; the counts
are kept in the metadata store, so every worker and every node together allows each limit once.
The scrypt check and the counting run in worker threads, so an AUTH never holds the event loop
(and the other sessions).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.store.passwords import hash_password, verify_password
from gateway.store.throttles import ThrottleStore

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


AUTH_LOCKED_REPLY = "421 4.7.0 Too many failed authentication attempts, closing connection"
AUTH_FAILED_REPLY = "535 5.7.8 Authentication credentials invalid"
# RFC 4954's "temporary authentication failure": for a locked account name (the same for every
# name, known or not), and for a client whose attempts still being checked hold its last tries.
AUTH_TRY_LATER_REPLY = "454 4.7.0 Temporary authentication failure, try again later"
# Account names longer than this are counted by their first characters (the store's key).
_MAX_ACCOUNT_KEY = 256
# scrypt checks running at once (each takes ~100 ms of a core and 16 MiB); more wait their turn.
MAX_CONCURRENT_CHECKS = 2
# The throttles' scopes in the store (store/throttles.py).
CLIENT_SCOPE = "smtp-auth-client"
ACCOUNT_SCOPE = "smtp-auth-account"


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


class AuthFailureThrottle:
    """Counts failed AUTH attempts per key (a client, or an account name) in a sliding window
    and locks a key that has `max_failures` of them until `window` has passed since the last;
    then it starts from none. Kept in the store under `scope`: failures as uses of the scope,
    attempts being checked as uses of `scope/checking`, a lock as a use of `scope/locked`.

    The password check runs off the event loop, so attempts overlap: `admit` counts each
    attempt in flight as a failure until `settle` says how it ended, so that no burst of
    parallel sessions (on any worker or node) gets more tries than the limit. Every call
    blocks on the store: call it from a worker thread."""

    def __init__(self, store: ThrottleStore, scope: str, max_failures: int, window: timedelta,
                 clock: Callable[[], datetime]):
        if max_failures < 1 or window <= timedelta(0):
            raise ValueError("max_failures must be ≥ 1 and window longer than zero")
        self._store = store
        self._failures, self._checking = scope, f"{scope}/checking"
        self._lock = f"{scope}/locked"
        self._max_failures = max_failures
        self._window = window
        self._clock = clock

    def locked(self, key: str) -> bool:
        return self._store.count(self._lock, key, self._clock())[0] > 0

    def admit(self, key: str) -> bool:
        """Whether one more attempt may be checked now (then settle it); False when the key
        is locked, or its failures and the attempts in flight already reach the limit."""
        now = self._clock()
        with self._store.exclusive(self._failures, key):
            if self.locked(key):
                return False
            failures = self._store.count(self._failures, key, now)[0]
            in_flight = self._store.count(self._checking, key, now)[0]
            if failures + in_flight >= self._max_failures:
                return False
            # Counted for a window at most: an attempt whose settle never comes (a crash).
            self._store.add(self._checking, key, now + self._window)
            return True

    def settle(self, key: str, failed: bool) -> None:
        """An admitted attempt has ended; a failure is recorded."""
        with self._store.exclusive(self._failures, key):
            self._store.take_back(self._checking, key)
            if failed:
                self.record_failure(key)

    def record_failure(self, key: str) -> None:
        now = self._clock()
        with self._store.exclusive(self._failures, key):
            self._store.add(self._failures, key, now + self._window)
            if self._store.count(self._failures, key, now)[0] >= self._max_failures:
                self._store.clear(self._failures, key)  # after the lock: a clean slate
                self._store.add(self._lock, key, now + self._window)


class _Admission(Enum):
    ADMITTED = "admitted"
    NO_PASSWORD = "no password"  # not LOGIN or PLAIN: nothing to count
    CLIENT_LOCKED = "client locked"
    CLIENT_BUSY = "client's attempts in flight hold its last tries"
    ACCOUNT_LOCKED = "account locked"


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

    A coroutine: GatewaySMTP (server.py) awaits it; the counting (in the store) and scrypt
    run in worker threads; a store that fails fails the AUTH as any internal error does. A
    client locked by its throttle is refused with 421 and disconnected, an account name locked
    by its own (failures from all clients together) with 454, both without the password being
    checked, so guessing costs the attacker time and us no scrypt work. Unknown names are
    counted and refused exactly as known ones: the answers do not tell which names exist.
    """

    def __init__(self, users: dict[str, str], throttle: AuthFailureThrottle,
                 account_throttle: AuthFailureThrottle):
        self._users = users
        self._decoy = hash_password(secrets.token_urlsafe(16))  # checked for unknown names
        self._throttle = throttle
        self._accounts = account_throttle
        self._checks: asyncio.Semaphore | None = None  # made in the loop that first checks

    async def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        key = client_key(session.peer)
        password = isinstance(auth_data, LoginPassword)
        account = account_key(auth_data.login) if password else None
        admission = await asyncio.to_thread(self._admit, key, account)
        if admission is _Admission.CLIENT_LOCKED:
            log.warning("AUTH refused: client %s is locked after failed attempts", key)
            _close_after_reply(server)
            return AuthResult(success=False, handled=False, message=AUTH_LOCKED_REPLY)
        if admission is _Admission.NO_PASSWORD:
            return AuthResult(success=False, handled=False)
        if admission is _Admission.CLIENT_BUSY:
            return AuthResult(success=False, handled=False, message=AUTH_TRY_LATER_REPLY)
        if admission is _Admission.ACCOUNT_LOCKED:
            log.warning("AUTH refused: account %r is locked after failed attempts", account)
            return AuthResult(success=False, handled=False, message=AUTH_TRY_LATER_REPLY)
        assert account is not None
        matches = False
        try:
            matches = await self._check(auth_data)
        finally:
            await asyncio.to_thread(self._settle, key, account, not matches)
        if not matches:
            log.info("AUTH failed for client %s", key)
            return AuthResult(success=False, handled=False, message=AUTH_FAILED_REPLY)
        return AuthResult(success=True, auth_data=auth_data.login.decode("utf-8", "replace"))

    def _admit(self, key: str, account: str | None) -> _Admission:
        """In a worker thread: whether the attempt may be checked (counted by both throttles
        then, until _settle)."""
        if self._throttle.locked(key):
            return _Admission.CLIENT_LOCKED
        if account is None:
            return _Admission.NO_PASSWORD
        if not self._throttle.admit(key):
            # Its earlier attempts, still being checked, may use up the client's last tries.
            return _Admission.CLIENT_BUSY
        if not self._accounts.admit(account):
            self._throttle.settle(key, failed=False)
            return _Admission.ACCOUNT_LOCKED
        return _Admission.ADMITTED

    def _settle(self, key: str, account: str, failed: bool) -> None:
        self._accounts.settle(account, failed=failed)
        self._throttle.settle(key, failed=failed)

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
