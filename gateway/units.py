"""Parse the human units used in configuration: durations ("90s", "7d") and sizes ("50MiB")."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTOR = {
    "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}


def parse_duration(value: object) -> timedelta:
    """'90s', '15m', '2h', '7d', '1w', '250ms', or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '7d' or '90s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration like '7d' or '90s', got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return timedelta(seconds=seconds)


def parse_size(value: object) -> int:
    """'50MiB' (1024-based), '50MB' (1000-based), '512KiB', or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '50MiB', got {value!r}")
    if isinstance(value, int):
        number, factor = value, 1
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        number = float(match.group(1))
        factor = _SIZE_FACTOR[(match.group(2) or "b").lower()]
    else:
        raise ValueError(f"expected a size like '50MiB', got {value!r}")
    if number < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return int(number * factor)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
