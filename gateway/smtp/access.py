"""Who may relay through us: clients in `allowed_clients`, or clients that authenticated over TLS.

Never an open relay: anything not allowed is refused at RCPT with 5.7.1, whatever the address
looks like (`%`, source routes, quoted local parts). Password guessing is throttled per client.
"""

from __future__ import annotations

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


def client_key(peer: object) -> str:
    """Whose failures count together: the IPv4 address, or the IPv6 /64 (one site's prefix)."""
    address = peer_ip(peer)
    if address is None:
        return "unknown"  # not an IP peer (never seen on TCP): such clients share one count
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Failures:
    times: deque[datetime] = field(default_factory=deque)
    locked_until: datetime | None = None


class AuthFailureThrottle:
    """Counts failed AUTH attempts per client in a sliding window and locks a client that has
    `max_failures` of them until `window` has passed since the last one."""

    def __init__(self, max_failures: int, window: timedelta, clock: Callable[[], datetime]):
        if max_failures < 1 or window <= timedelta(0):
            raise ValueError("max_failures must be ≥ 1 and window longer than zero")
        self._max_failures = max_failures
        self._window = window
        self._clock = clock
        self._clients: dict[str, _Failures] = {}

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

    A client locked by the throttle is refused with 421 and disconnected without its password
    being checked, so guessing costs the attacker time and us no scrypt work.
    """

    def __init__(self, users: dict[str, str], throttle: AuthFailureThrottle | None = None):
        self._users = users
        self._decoy = hash_password(secrets.token_urlsafe(16))  # checked for unknown names
        if throttle is None:
            throttle = AuthFailureThrottle(5, timedelta(minutes=10), _utc_now)
        self._throttle = throttle

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        key = client_key(session.peer)
        if self._throttle.locked(key):
            log.warning("AUTH refused: client %s is locked after failed attempts", key)
            _close_after_reply(server)
            return AuthResult(success=False, handled=False, message=AUTH_LOCKED_REPLY)
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        stored = self._users.get(name)
        # An unknown name costs the same scrypt as a wrong password: the time taken must not
        # tell which user names exist.
        matches = verify_password(password, stored if stored is not None else self._decoy)
        if stored is None or not matches:
            self._throttle.record_failure(key)
            log.info("AUTH failed for client %s", key)
            return AuthResult(success=False, handled=False, message=AUTH_FAILED_REPLY)
        return AuthResult(success=True, auth_data=name)


def _utc_now() -> datetime:
    return datetime.now(UTC)
