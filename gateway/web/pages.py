"""Render the portal's pages: templates in ja/en, error pages, and cookies scoped to the page's
token. What a request may see or do is decided before (link_gate.py)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from gateway.presentation import format_expiry
from gateway.web.i18n import LOCALES, Translator, choose_locale

LANG_COOKIE_AGE = 365 * 24 * 3600
# Where a token's pages live; the first path segment names the kind of token.
_TOKEN_PREFIXES = {"d": "/d/", "m": "/m/"}
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def token_base(request: web.Request) -> str:
    """`/d/<token>` or `/m/<token>` for the page a request is about; '' without a token."""
    token = request.match_info.get("token")
    if not token:
        return ""
    segment = request.path.lstrip("/").split("/", 1)[0]
    return f"{_TOKEN_PREFIXES.get(segment, '/d/')}{quote(token, safe='')}"


class Pages:
    """Renders web/* of the templates directory (gateway/templates/ unless configured) in the
    visitor's language, with the language switch and cookies scoped to the page's token."""

    def __init__(self, templates_dir: Path, timezone: ZoneInfo, https: bool):
        self.https = https
        self.timezone = timezone
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
        )

    def locale(self, request: web.Request) -> str:
        return choose_locale(
            request.query, request.cookies, request.headers.get("Accept-Language", "")
        )

    def local(self, moment: datetime, locale: str) -> str:
        return format_expiry(moment.astimezone(self.timezone), locale)

    def render(self, request: web.Request, template: str, status: int, *,
               lang_base: str | None = None, **context: Any) -> web.Response:
        locale = self.locale(request)
        html = self._templates.get_template(f"web/{template}").render(
            t=Translator(locale), lang=locale,
            lang_base=token_base(request) if lang_base is None else lang_base, **context,
        )
        response = web.Response(status=status, text=html, content_type="text/html")
        response.headers["Content-Language"] = locale
        chosen = request.query.get("lang")
        if chosen in LOCALES:
            self.set_cookie(response, request, "lang", chosen, max_age=LANG_COOKIE_AGE,
                            samesite="Lax", path="/")
        return response

    def set_cookie(self, response: web.StreamResponse, request: web.Request, name: str,
                   value: str, *, max_age: int, samesite: str, path: str | None = None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=path or token_base(request) or "/",
            httponly=True, samesite=samesite, secure=self.https,
        )

    def error_page(self, request: web.Request, status: int, message: str | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
        if status == 404:
            # Relative switch links: the page is the same whatever token was asked for.
            response = self.render(request, "not_found.html", 404, lang_base="")
        else:
            titles = {403: "forbidden_title", 429: "locked_title", 500: "server_error_title",
                      503: "server_error_title"}
            bodies = {403: "forbidden_csrf", 500: "server_error_body"}
            base = token_base(request)
            response = self.render(
                request, "error.html", status, status_code=status,
                title_key=titles.get(status, "error_title"),
                body_key=message or bodies.get(status, "error_body"),
                back=_has_valid_token_shape(request),
                back_key="back_manage" if base.startswith("/m/") else "back",
            )
        response.headers.update(headers or {})
        return response

    def guessing_page(self, request: web.Request, wait: timedelta | None) -> web.Response:
        """429 for a client that has tried too many unknown tokens, for as long as it must wait."""
        seconds = max(math.ceil(wait.total_seconds()), 1) if wait else 1
        return self.error_page(request, 429, message="error_body",
                               headers={"Retry-After": str(seconds)})


def _has_valid_token_shape(request: web.Request) -> bool:
    """Whether an error page may offer a way back to the token's page (only a shape check:
    the page says nothing about whether the token exists)."""
    return bool(_TOKEN_SHAPE.fullmatch(request.match_info.get("token", "")))
