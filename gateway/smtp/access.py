"""Who may relay through us: clients in `allowed_clients`, or clients that authenticated over TLS.

Never an open relay: anything not allowed is refused at RCPT with 5.7.1.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Iterable

from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.store.passwords import verify_password


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


class PasswordFileAuthenticator:
    """aiosmtpd authenticator for LOGIN/PLAIN against the users file (checked in constant time)."""

    def __init__(self, users: dict[str, str]):
        self._users = users

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        stored = self._users.get(name)
        if stored is None or not verify_password(password, stored):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=name)
