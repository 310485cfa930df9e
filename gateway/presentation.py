"""How the gateway shows things to people, in mail and on the portal alike: the languages it
speaks, file names made safe to show, sizes and expiry times as each language writes them."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from gateway.filenames import clean_text

LOCALES = ("ja", "en")  # the first is the default
DEFAULT_LOCALE = LOCALES[0]

_MAX_NAME_CHARS = 200
_JA_WEEKDAYS = "月火水木金土日"
_EN_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ZONE_ABBREVIATION = re.compile(r"^[A-Za-z]{2,6}$")


def display_name(name: str) -> str:
    """A file name that cannot break lines, switch ISO-2022-JP modes, reorder text or fail to
    encode (a lone surrogate becomes U+FFFD): stored names are clean already, this is the
    last line before a mail body or an HTML page."""
    kept = clean_text(name).strip()
    if len(kept) > _MAX_NAME_CHARS:
        kept = kept[: _MAX_NAME_CHARS - 1] + "…"
    return kept


def human_size(size: int, locale: str = "en") -> str:
    """1024-based, one decimal: '512 B', '6.7 KB', '1.2 MB' (as Explorer and Finder users read)."""
    if size < 1024:
        return f"{size} バイト" if locale == "ja" else f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if round(value, 1) < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_expiry(moment: datetime, locale: str) -> str:
    """ja: '2026年12月3日(木) 17:00 JST'; en: 'Thu, 3 Dec 2026 17:00 JST'."""
    zone = _zone_label(moment)
    clock = f"{moment.hour:02d}:{moment.minute:02d}"
    if locale == "ja":
        weekday = _JA_WEEKDAYS[moment.weekday()]
        return f"{moment.year}年{moment.month}月{moment.day}日({weekday}) {clock} {zone}"
    weekday = _EN_WEEKDAYS[moment.weekday()]
    month = _EN_MONTHS[moment.month - 1]
    return f"{weekday}, {moment.day} {month} {moment.year} {clock} {zone}"


def _zone_label(moment: datetime) -> str:
    name = moment.tzname() or ""
    if _ZONE_ABBREVIATION.match(name):
        return name
    offset = moment.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"
