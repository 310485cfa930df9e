"""Render a link's landing page: sender, subject, each file (name, size, SHA-256), expiry and
downloads left, with the forms the visitor still needs (one-time code, download password)
and the download buttons. It only shows; every route that answers with it decided first,
through the link gate, that the link may be shown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable
from urllib.parse import quote

from aiohttp import web

from gateway.presentation import display_name, human_size
from gateway.web.download import download_name
from gateway.web.i18n import Translator
from gateway.web.link_gate import LinkGate, LinkState
from gateway.web.pages import Pages


def mask_address(address: str) -> str:
    """`t****@partner.example.com`: enough for the recipient to recognise, not to learn."""
    local, at, domain = address.rpartition("@")
    if not at:
        return f"{address[:1]}****"
    return f"{local[:1]}****@{domain}"


class LandingPage:
    def __init__(self, *, gate: LinkGate, pages: Pages, clock: Callable[[], datetime],
                 otp_max_attempts: int):
        self._gate = gate
        self._pages = pages
        self._clock = clock
        self._otp_max_attempts = otp_max_attempts

    def render(self, request: web.Request, state: LinkState, status: int, *,
               alert: str | None = None, locked_until: datetime | None = None
               ) -> web.Response:
        """The page for a link the gate let through; `alert` says why the last form failed,
        `locked_until` that the password form is locked until then."""
        link, transfer = state.link, state.transfer
        assert link is not None and transfer is not None
        pages = self._pages
        locale = pages.locale(request)
        t = Translator(locale)
        now = self._clock()
        needs_password = not self._gate.has_password_session(request, state)
        if locked_until is None and needs_password and state.guard and state.guard.locked_until:
            locked_until = state.guard.locked_until if state.guard.locked_until > now else None
        verified = self._gate.verified(request, state)
        verify = None if verified else self._verify_context(state, locale)
        left = link.max_downloads - link.download_count
        files = [
            {
                "id": f.id,
                "name": display_name(f.display_name) or download_name(""),
                "size": t("size_value", human=human_size(f.size, locale), bytes=f"{f.size:,}"),
                "sha256": f.sha256,
            }
            for f in state.files
        ]
        return pages.render(
            request, "landing.html", status, transfer=transfer,
            recipient=verify["address"] if verify else link.recipient,
            files=files, expires=pages.local(transfer.expires_at, locale),
            downloads_left=t("unlimited") if link.max_downloads == 0 else t("times", count=left),
            csrf=self._gate.csrf_token(link.id, now),
            verify=verify, needs_password=needs_password, alert=alert,
            locked_until=pages.local(locked_until, locale) if locked_until else None,
            action_base=f"/d/{quote(request.match_info['token'], safe='')}",
        )

    def _verify_context(self, state: LinkState, locale: str) -> dict[str, Any]:
        """The code form: to whom the code goes (masked), and the live code's end if any."""
        assert state.link is not None
        otp = state.otp
        live = otp is not None and otp.usable(self._clock(), self._otp_max_attempts)
        return {
            "address": mask_address(state.link.recipient),
            "locked": otp is not None and otp.locked_at is not None,
            "code_sent": live,
            "until": self._pages.local(otp.expires_at, locale) if live and otp else None,
        }
