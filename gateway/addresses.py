"""What an envelope address is: its domain, whether it is a plain mailbox that no hop can route
elsewhere, and the null sender.

The addresses arrive as aiosmtpd parsed them with the stdlib's RFC 5322 parser: a source route
(`<@a,@b:user@c>`) is already dropped (RFC 5321 App. C), a needlessly quoted local part
(`"tanaka"@dom`) comes unquoted, and the null reverse-path `<>` comes as the literal "<>".
The address we judge is the address we relay, so only its shape matters here.
"""

from __future__ import annotations

import re

NULL_SENDER = ""  # the reverse-path of bounces, delivery reports and auto-replies (`MAIL FROM:<>`)

# RFC 5322 atext without "%" and "!": the percent hack (`user%other@relay`) and UUCP bang paths
# (`other!user@relay`) make an MTA that still honours them deliver somewhere else.
_ATOM = r"[A-Za-z0-9#$&'*+/=?^_`{|}~\-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")


def reverse_path(address: str | None) -> str:
    """The sender as the pipeline keeps it: NULL_SENDER for `MAIL FROM:<>`."""
    if address is None or address == "<>":
        return NULL_SENDER
    return address


def is_null_sender(address: str) -> bool:
    return address == NULL_SENDER


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def is_plain_mailbox(address: str) -> bool:
    """local@domain that every MTA delivers to that domain: a dot-atom local part without "%" or
    "!" (no quoted string, so no "@" or ":" inside it, no source route), and a domain name (no
    address literal such as `[192.0.2.1]`). Non-ASCII letters (RFC 6531) are allowed, blanks and
    controls are not. False for everything else, and for the null sender."""
    local, at, domain = address.rpartition("@")
    if not at or not _plain(local, _DOT_ATOM):
        return False
    labels = domain.removesuffix(".").split(".")
    return len(domain) <= 255 and all(_plain(label, _LABEL) for label in labels)


def _plain(text: str, pattern: re.Pattern[str]) -> bool:
    """`pattern` matches text once every non-ASCII character stands in as a letter."""
    if text.isascii():  # the usual case: nothing stands in, so no per-character walk
        return bool(text) and pattern.fullmatch(text) is not None
    if any(not ch.isascii() and (ch.isspace() or not ch.isprintable()) for ch in text):
        return False
    return bool(pattern.fullmatch("".join(ch if ch.isascii() else "a" for ch in text)))
