"""Render the notice that tells a recipient their attachment became a download link.

The notice is rendered twice, as plain text and as an HTML block, in the recipient's
locale. Templates live in templates/mail/notice.{ja,en}.{txt,html}; this module only
fills them with display-ready values (human sizes, local dates, safe file names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import jinja2

from gateway.filenames import clean_text

LOCALES = frozenset({"ja", "en"})
PASSWORD_MODES = frozenset({"none", "recipient-email", "sender-email", "webhook"})

_MAX_NAME_CHARS = 200
_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f\"'<>\\]+$", re.IGNORECASE)
_NO_NAME = {"ja": "（名前なし）", "en": "(no name)"}
_JA_WEEKDAYS = "月火水木金土日"
_EN_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ZONE_ABBREVIATION = re.compile(r"^[A-Za-z]{2,6}$")


@dataclass(frozen=True)
class NoticeFile:
    name: str
    size: int  # bytes


@dataclass(frozen=True)
class Notice:
    locale: str  # "ja" | "en"
    files: tuple[NoticeFile, ...]
    url: str
    expires_at: datetime  # aware, already in the zone the recipient should see
    password: str  # how a password reaches the recipient, never the password itself
    double_zip: bool = False  # a converted ZIP holds another ZIP: say so in one line

    def __post_init__(self) -> None:
        if self.locale not in LOCALES:
            raise ValueError(f"unknown notice locale {self.locale!r}")
        if self.password not in PASSWORD_MODES:
            raise ValueError(f"unknown password mode {self.password!r}")
        if self.expires_at.utcoffset() is None:
            raise ValueError("expires_at must be time-zone aware")
        # The URL goes into an href and into bodies with strict line rules: no spaces, no quotes.
        if not _URL.match(self.url):
            raise ValueError(f"not a plain http(s) URL: {self.url!r}")


def make_template_env(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_notice(env: jinja2.Environment, notice: Notice) -> tuple[str, str]:
    """(text, html) for one recipient."""
    context = {
        "files": [
            {
                "name": display_name(f.name) or _NO_NAME[notice.locale],
                "size": human_size(f.size, notice.locale),
            }
            for f in notice.files
        ],
        "url": notice.url,
        "expires": format_expiry(notice.expires_at, notice.locale),
        "password": notice.password,
        "double_zip": notice.double_zip,
    }
    text = env.get_template(f"mail/notice.{notice.locale}.txt").render(context)
    html = env.get_template(f"mail/notice.{notice.locale}.html").render(context)
    return _clean_lines(text), _clean_lines(html)


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


def _clean_lines(rendered: str) -> str:
    """LF line ends, no trailing blanks (format=flowed reads a trailing space as a soft break)."""
    lines = [line.rstrip() for line in rendered.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"
