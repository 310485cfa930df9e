"""Which next hop a configuration names: `smtp://HOST[:PORT]` or `outbox:PATH` (a folder)."""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path

from gateway.outbound.folder import FolderNextHop
from gateway.outbound.hop import NextHop
from gateway.outbound.smtp import SmtpNextHop, StartTls

_SMTP_URL = re.compile(
    r"smtp://(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?/?",
    re.IGNORECASE,
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _bad_url(url: str) -> ValueError:
    return ValueError(f"invalid next hop URL {url!r}: expected smtp://HOST[:PORT] or outbox:PATH")


def _valid_host_name(name: str) -> bool:
    labels = name.removesuffix(".").split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks like IPv4, so must be IPv4
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
    return True


def parse_next_hop_url(url: str) -> tuple[str, ...]:
    """("smtp", HOST, PORT) or ("outbox", PATH); ValueError with a one-line message otherwise."""
    if not url.isprintable() or url != url.strip():  # no line breaks, tabs or stray blanks
        raise _bad_url(url)
    if url.startswith("outbox:"):
        path = url.removeprefix("outbox:")
        if not path:
            raise _bad_url(url)
        return ("outbox", path)
    match = _SMTP_URL.fullmatch(url)
    if match is None:
        raise _bad_url(url)
    port = int(match["port"] or 25)
    if not 0 < port < 65536:
        raise _bad_url(url)
    if match["ipv6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(match["ipv6"]))
        except ValueError:
            raise _bad_url(url) from None
    elif _valid_host_name(match["name"]):
        host = match["name"]
    else:
        raise _bad_url(url)
    return ("smtp", host, str(port))


def make_next_hop(
    url: str,
    *,
    starttls: StartTls,
    timeout: float,
    helo_name: str,
    pool_size: int = 4,
    tls_context: ssl.SSLContext | None = None,
) -> NextHop:
    parsed = parse_next_hop_url(url)
    if parsed[0] == "outbox":
        return FolderNextHop(Path(parsed[1]))
    _, host, port = parsed
    return SmtpNextHop(
        host,
        int(port),
        starttls=starttls,
        timeout=timeout,
        helo_name=helo_name,
        pool_size=pool_size,
        tls_context=tls_context,
    )
