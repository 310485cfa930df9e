"""Render the notice that tells a recipient their attachment became a download link.

The notice is rendered twice, as plain text and as an HTML block, in the recipient's
locale. Templates live in gateway/templates/mail/notice.{ja,en}.{txt,html} (or in the
administrator's `gateway.templates_dir`); this module only fills them with display-ready values
(human sizes, local dates, safe file names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2

from gateway.presentation import LOCALES, display_name, format_expiry, human_size

PASSWORD_MODES = frozenset({"none", "recipient-email", "sender-email", "webhook"})

_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f\"'<>\\]+$", re.IGNORECASE)
_NO_NAME = {"ja": "（名前なし）", "en": "(no name)"}


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


def _clean_lines(rendered: str) -> str:
    """LF line ends, no trailing blanks (format=flowed reads a trailing space as a soft break)."""
    lines = [line.rstrip() for line in rendered.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"
