"""What the fuzzer makes of the gateway's SMTP replies, apart from the socket that carried them: one
message's exchange, the properties a reply breaks (a 4xx without cause, a 5xx without a reason,
no reply at all), and DATA dot-stuffed so that only CRLF.CRLF ends it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ENHANCED = re.compile(r"^(\d)\.\d{1,3}\.\d{1,3}(?:\s+(.*))?$", re.S)
_TXID = re.compile(r"\s*\[[0-9A-Za-z]+\]\s*$")


@dataclass
class Exchange:
    replies: list[tuple[str, int, str]] = field(default_factory=list)  # (command, code, text)
    final: tuple[int, str] | None = None  # the reply that decided the message
    problem: str | None = None  # no reply: timeout or connection closed


def dot_stuffed(data: bytes) -> bytes:
    """Only CRLF.CRLF ends DATA, so only a dot after CRLF (or at the start) is doubled."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def reply_problems(exchange: Exchange) -> list[tuple[str, str]]:
    problems = []
    for command, code, text in exchange.replies:
        line = f"{command} → {code} {text}"
        if 400 <= code < 500:
            problems.append(("tempfail-without-cause", line))
        elif code >= 500:
            match = ENHANCED.match(text.strip())
            words = _TXID.sub("", match.group(2) or "") if match else ""
            if not match or match.group(1) != "5" or not re.search(r"[A-Za-z]{2,}", words):
                problems.append(("5xx-without-reason", line))
    if exchange.problem:
        problems.append(("hang", exchange.problem))
    return problems
