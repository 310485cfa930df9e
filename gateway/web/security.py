"""Protect the portal's pages: response headers, CSRF tokens, where a POST comes from (our own
origins), signed cookies (password session, verified recipient), the MACs one-time codes are
stored as, client IP.

Tokens and cookies are `<unix seconds>.<HMAC-SHA256, base64url>` under the 32-byte portal
secret, each kind with its own label so one can never pass for another. Nothing here keeps
state: a token is valid when its MAC checks and its time is right.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from datetime import datetime, timedelta
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
CSRF_LIFETIME = timedelta(hours=2)
# A token issued by a clock slightly ahead (another worker) is still accepted.
_CLOCK_SKEW = timedelta(minutes=1)
_CSRF_LABEL = b"ppap-portal/csrf/v1\x00"
_SESSION_LABEL = b"ppap-portal/session/v1\x00"
_VERIFIED_LABEL = b"ppap-portal/verified/v1\x00"
_OTP_LABEL = b"ppap-portal/otp/v1\x00"
_MAX_FORWARDED_CHARS = 2048

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def security_headers(https: bool) -> dict[str, str]:
    """The headers every response carries, static files and error pages included."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "X-Robots-Tag": "noindex, nofollow",
        # Instead of aiohttp's name and version.
        "Server": "ppap-gateway",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


def make_header_hook(
    https: bool,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook: runs for every response just before its headers go out."""
    fixed = security_headers(https)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(fixed)
        if request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "public, max-age=3600"
        else:
            response.headers["Cache-Control"] = "no-store"

    return add_headers


# -- MACs -----------------------------------------------------------------------------------


def _mac(secret: bytes, label: bytes, *parts: str) -> str:
    message = label + b"\x00".join(part.encode("utf-8", "surrogatepass") for part in parts)
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _split_signed(value: str) -> tuple[int, str] | None:
    stamp, dot, mac = value.partition(".")
    if not dot or not stamp.isdigit() or len(stamp) > 12 or len(mac) != 43:
        return None
    return int(stamp), mac


def make_csrf_token(secret: bytes, link_id: str, issued_at: datetime) -> str:
    stamp = str(int(issued_at.timestamp()))
    return f"{stamp}.{_mac(secret, _CSRF_LABEL, link_id, stamp)}"


def csrf_problem(secret: bytes, link_id: str, token: str, now: datetime) -> str | None:
    """None if the token is good for this link now; else 'csrf_missing', 'csrf_invalid' or
    'csrf_expired'."""
    if not token:
        return "csrf_missing"
    parsed = _split_signed(token)
    if parsed is None:
        return "csrf_invalid"
    stamp, mac = parsed
    if not hmac.compare_digest(mac, _mac(secret, _CSRF_LABEL, link_id, str(stamp))):
        return "csrf_invalid"
    age = now.timestamp() - stamp
    if age > CSRF_LIFETIME.total_seconds() or age < -_CLOCK_SKEW.total_seconds():
        return "csrf_expired"
    return None


def _make_until(label: bytes, secret: bytes, link_id: str, expires_at: datetime) -> str:
    stamp = str(int(expires_at.timestamp()))
    return f"{stamp}.{_mac(secret, label, link_id, stamp)}"


def _valid_until(label: bytes, secret: bytes, link_id: str, value: str, now: datetime) -> bool:
    parsed = _split_signed(value)
    if parsed is None:
        return False
    stamp, mac = parsed
    if not hmac.compare_digest(mac, _mac(secret, label, link_id, str(stamp))):
        return False
    return now.timestamp() < stamp


def make_session(secret: bytes, link_id: str, expires_at: datetime) -> str:
    """The cookie that says: this browser gave the link's download password."""
    return _make_until(_SESSION_LABEL, secret, link_id, expires_at)


def session_valid(secret: bytes, link_id: str, value: str, now: datetime) -> bool:
    return _valid_until(_SESSION_LABEL, secret, link_id, value, now)


def make_verified(secret: bytes, link_id: str, expires_at: datetime) -> str:
    """The cookie that says: this browser typed a one-time code mailed to the recipient."""
    return _make_until(_VERIFIED_LABEL, secret, link_id, expires_at)


def verified_valid(secret: bytes, link_id: str, value: str, now: datetime) -> bool:
    return _valid_until(_VERIFIED_LABEL, secret, link_id, value, now)


def otp_mac(secret: bytes, link_id: str, code: str) -> str:
    """What is stored of a one-time code: its MAC, bound to the link it was sent for."""
    return _mac(secret, _OTP_LABEL, link_id, code)


# -- where a POST comes from ---------------------------------------------------------------


def origin_of(url: str) -> str | None:
    """scheme://host[:port] as a browser writes it in Origin (default ports left out)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" if port in (None, default) else f"{parts.scheme}://{host}:{port}"


def listen_origin(scheme: str, sockname: object) -> str | None:
    """The origin a browser writes when it opened the portal on its listen address directly:
    scheme://address:port of the socket the request arrived on (`sockname`, the operating
    system's word, never a header the client wrote). An IPv4 client of a dual-stack socket
    arrives on an IPv4-mapped address; its browser wrote the IPv4 one."""
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return None
    try:
        address = ipaddress.ip_address(sockname[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    host = f"[{address}]" if address.version == 6 else str(address)
    return origin_of(f"{scheme}://{host}:{sockname[1]}")


def fetched_cross_site(fetch_site: str | None) -> bool:
    """Whether Sec-Fetch-Site (Fetch Metadata) says another site's page made the request.
    'same-site' (a sibling subdomain) is left to the Origin check; no header says nothing."""
    return (fetch_site or "").strip().lower() == "cross-site"


def cross_site(origin: str | None, referer: str | None, allowed: Iterable[str],
               fetch_site: str | None = None) -> bool:
    """True when the browser says the POST came from another site.

    `Origin: null` says nothing: browsers send it for our own forms, because our pages are
    served with Referrer-Policy: no-referrer (but a sandboxed frame elsewhere sends it too,
    which `fetch_site`, the Sec-Fetch-Site header, reveals). The CSRF token is the real
    defence.
    """
    if fetched_cross_site(fetch_site):
        return True
    allowed = set(allowed)
    if origin and origin != "null":
        return origin.lower() not in allowed
    if referer:
        return origin_of(referer) not in allowed
    return False


# -- client address -------------------------------------------------------------------------


def _parse_address(text: str) -> IPAddress | None:
    text = text.strip()
    candidates = [text]
    if text.startswith("[") and "]" in text:  # [v6]:port
        candidates.append(text[1:text.index("]")])
    elif text.count(":") == 1:  # v4:port
        candidates.append(text.split(":", 1)[0])
    for candidate in candidates:
        try:
            return ipaddress.ip_address(candidate)
        except ValueError:
            continue
    return None


def _trusted(address: IPAddress, proxies: tuple[Network, ...]) -> bool:
    return any(address in network for network in proxies)


def client_ip(peer: str | None, forwarded_for: list[str], proxies: tuple[Network, ...]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy; then the rightmost
    X-Forwarded-For entry that is not itself a trusted proxy. An entry that is not an address
    stops the walk at the last hop we could vouch for."""
    peer_address = _parse_address(peer or "")
    if peer_address is None:
        return peer or ""
    if not _trusted(peer_address, proxies):
        return str(peer_address)
    # The nearest hops are at the right end: a header too long loses its left part.
    hops = ",".join(forwarded_for)[-_MAX_FORWARDED_CHARS:].split(",")
    nearest = peer_address
    for entry in reversed(hops):
        if not entry.strip():
            continue
        address = _parse_address(entry)
        if address is None:
            break
        nearest = address
        if not _trusted(address, proxies):
            break
    return str(nearest)
