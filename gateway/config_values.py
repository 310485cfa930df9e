"""Check and convert one configuration value: each converter takes what TOML (or a `-o`
override) gave and returns the typed value, or raises ValueError with a short problem text that
gateway.config turns into a ConfigError naming the key."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.scan.clamd import parse_clamd_address
from gateway.units import parse_duration, parse_size


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {value}")
        return value

    return convert


def workers(value: Any) -> int:
    """"auto" (0: one per core) or a number of worker processes."""
    if value == "auto":
        return 0
    return integer(1, 256)(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return convert


def duration(value: Any) -> timedelta:
    return parse_duration(value)


def size(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        size = parse_size(value)
        if size < minimum:
            raise ValueError(f"must be at least {minimum} bytes, got {value!r}")
        return size

    return convert


def file_path(value: Any) -> Path:
    return Path(string(value)).expanduser()


def optional_existing_file(value: Any) -> Path | None:
    if value == "":
        return None
    path = file_path(value)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def text_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def domains(value: Any) -> tuple[str, ...]:
    return tuple(d.strip().lower().rstrip(".") for d in text_list(value) if d.strip())


def networks(value: Any) -> tuple:
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in text_list(value))
    except ValueError as error:
        raise ValueError(f"not a network: {error}") from None


def listen(value: Any) -> tuple[str, int]:
    text = string(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def timezone(value: Any) -> ZoneInfo:
    try:
        return ZoneInfo(string(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None


def public_url(value: Any) -> str:
    text = string(value).rstrip("/")
    if not (text.startswith("https://") or text.startswith("http://")) or len(text) < 10:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return text


def clamd_address(value: Any) -> str:
    text = string(value)
    if text:
        parse_clamd_address(text)  # ValueError names what is wrong
    return text


def webhook_url(value: Any) -> str:
    text = string(value)
    if text and not (text.startswith("https://") or text.startswith("http://")):
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return text


def next_hop_url(value: Any) -> str:
    text = string(value)
    if text.startswith("outbox:") and len(text) > len("outbox:"):
        return text
    if text.startswith("smtp://"):
        hostport = text[len("smtp://"):]
        host, _, port = hostport.rpartition(":") if ":" in hostport.lstrip("[") else (hostport, "", "25")
        if host.strip("[]") and port.isdigit() and 0 < int(port) <= 65535:
            return text
    raise ValueError(f"expected smtp://HOST:PORT or outbox:PATH, got {text!r}")
