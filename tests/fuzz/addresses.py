"""Who counts as inside the organisation for the fuzzer: its mutators pick outside recipients
with it, and its oracle judges what reached them. Independent of gateway code, like the oracle.
"""

from __future__ import annotations

import re

INTERNAL_DOMAIN = "city.example.lg.jp"
# RFC 5322 atext without "%" and "!" (relay hacks); dots only between atoms.
_ATOM = r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


def is_internal(address: str) -> bool:
    """Internal only if exactly `local@city.example.lg.jp` with a plain dot-atom local part."""
    local, at, domain = address.rpartition("@")
    return (bool(at) and domain.isascii() and domain.lower() == INTERNAL_DOMAIN
            and _DOT_ATOM.fullmatch(local) is not None)
