"""The gate every request for a portal token passes before a route may act on it.

A download token is hashed and looked up (well-formed or not: no shortcut to time), and what
it leads to is decided once, here: unknown, not yet usable, revoked, expired, used up or
blocked, each refused with its page and status; a client that has guessed too many tokens
(download or management) is refused before any lookup, so refusals never tell hits from
misses. A POST passes only from our own site (Sec-Fetch-Site, Origin, Referer) with a CSRF
token bound to its link, or to its transfer on the management page. The gate writes the
refusal audit events and the portal's metric events, and signs the per-link cookies that
prove a download password (session) or a one-time code (verified recipient).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Protocol, TypeVar
from urllib.parse import quote

from aiohttp import web

from gateway.config import PortalSettings
from gateway.store.controls import ControlsStore, OtpState, TransferControls
from gateway.store.db import Database, FileRow, LinkRow, PasswordGuardRow, TransferRow
from gateway.store.passwords import hash_token
from gateway.store.unlocks import UnlockStore
from gateway.web.pages import Pages
from gateway.web.ratelimit import GuessThrottle
from gateway.web.security import (
    client_ip,
    cross_site,
    csrf_problem,
    listen_origin,
    make_csrf_token,
    make_session,
    make_verified,
    origin_of,
    session_valid,
    verified_valid,
)

log = logging.getLogger("gateway.web")

# kind, labels -> the metrics (app.py); never raises into a request.
EventsHook = Callable[[str, dict], None]
SESSION_COOKIE = "ppap_session"
VERIFIED_COOKIE = "ppap_verified"
# Refusal reason → status. Unknown and not-yet-usable links are indistinguishable (404).
REFUSAL_STATUS = {
    "not_found": 404, "not_active": 404, "no_such_file": 404,
    "revoked": 410, "expired": 410, "limit_reached": 410, "blocked": 410,
    "cross_site": 403, "csrf_missing": 403, "csrf_invalid": 403, "csrf_expired": 403,
    "password_required": 403, "verification_required": 403, "locked": 429,
    "otp_throttled": 429, "otp_link_locked": 403, "guessing": 429, "storage": 500,
}
# The window of PortalSettings.max_unknown_tokens.
GUESS_WINDOW = timedelta(minutes=10)
_MAX_USER_AGENT_CHARS = 256


@dataclass(frozen=True)
class LinkState:
    """What a token leads to; `refusal` says why nothing may be offered (None: all is well)."""

    link: LinkRow | None
    transfer: TransferRow | None
    files: tuple[FileRow, ...]
    guard: PasswordGuardRow | None
    refusal: str | None
    controls: TransferControls | None = None
    otp: OtpState | None = None

    @property
    def verify_recipient(self) -> bool:
        return self.controls is not None and self.controls.verify_recipient


@dataclass(frozen=True)
class Throttled:
    """The client has guessed too many tokens: nothing was looked up; it must wait this long."""

    wait: timedelta


class OfTransfer(Protocol):
    """What a management token leads to: at least the transfer the page is about."""

    @property
    def transfer(self) -> TransferRow: ...


Found = TypeVar("Found")
Target = TypeVar("Target", bound=OfTransfer)


def management_csrf_subject(transfer_id: str) -> str:
    """What a management form's CSRF token is bound to (never a link id: links have ':'-free
    ids, so no download token can pass for a management one)."""
    return f"manage:{transfer_id}"


async def read_form(request: web.Request) -> dict[str, str]:
    """The POST's text fields; an unreadable body is an empty form (the checks then refuse)."""
    try:
        form = await request.post()
    except ValueError:
        return {}
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _any_link(state: LinkState) -> bool:
    return True


class LinkGate:
    """One per portal app, shared by every route (portal.py, otp.py, download_route.py,
    manage.py); the guess throttle it holds counts both kinds of token together."""

    def __init__(
        self, *, settings: PortalSettings, db: Database, controls: ControlsStore,
        unlocks: UnlockStore, pages: Pages, guesses: GuessThrottle, secret: bytes,
        clock: Callable[[], datetime], events_hook: EventsHook | None = None,
        retired_secrets: tuple[bytes, ...] = (),
    ):
        """`secret` signs; `retired_secrets` (a master-key rotation's) only check what was
        signed before it, so no visitor is logged out or loses a form by a rolling restart."""
        self._settings = settings
        self._public_origin = origin_of(settings.public_url)
        self._db = db
        self._controls = controls
        self._unlocks = unlocks
        self._pages = pages
        self._guesses = guesses
        self._secret = secret
        self._secrets = (secret, *retired_secrets)  # the current one first: it nearly always fits
        self._clock = clock
        self._events_hook = events_hook

    # -- looking a token up ---------------------------------------------------------------

    async def look_up(self, request: web.Request, find: Callable[[str], Found | None]
                      ) -> Found | Throttled | None:
        """`find(token)` in a worker thread, unless this client has guessed too many tokens;
        a token that leads nowhere (None) counts as a guess. The guesses are counted in the
        store: asked in the same thread hop as the lookup."""
        address = self.client(request)["client_ip"]
        token = request.match_info["token"]

        def throttled_find() -> Found | Throttled | None:
            wait = self._guesses.wait(address, self._clock())
            if wait is not None:
                return Throttled(wait)
            found = find(token)
            if found is None and self._guesses.missed(address, self._clock()):
                log.warning("portal: %s tried too many unknown links; throttled", address)
            return found

        return await asyncio.to_thread(throttled_find)

    async def resolve(self, request: web.Request) -> LinkState:
        """What the request's download token leads to, refusal included."""
        found = await self.look_up(request, self._link_state)
        if isinstance(found, Throttled):
            return LinkState(None, None, (), None, "guessing")
        return found or LinkState(None, None, (), None, "not_found")

    def _link_state(self, token: str) -> LinkState | None:
        # Always hashed and queried, however the token looks: no shortcut to time.
        link = self._db.link_by_token_hash(hash_token(token))
        if link is None:
            return None
        transfer = self._db.transfer(link.transfer_id)
        served, blocked = self._unlocks.served(link.transfer_id) if transfer else ([], False)
        files = tuple(served)
        guard = self._db.password_guard(link.id) if transfer and transfer.password_hash else None
        controls = self._controls.of(link.transfer_id) if transfer else None
        otp = self._controls.otp_state(link.id) if controls and controls.verify_recipient \
            else None
        refusal = "blocked" if blocked else self._refusal(link, transfer, files)
        return LinkState(link, transfer, files, guard, refusal, controls, otp)

    def _refusal(self, link: LinkRow, transfer: TransferRow | None,
                 files: tuple[FileRow, ...]) -> str | None:
        if transfer is None or link.state in ("pending", "failed"):
            return "not_active"
        if transfer.state in ("pending", "failed"):
            return "not_active"
        if link.state == "revoked":
            return "revoked"
        if link.state == "expired" or transfer.state == "purged" \
                or self._clock() >= transfer.expires_at:
            return "expired"
        if link.max_downloads and link.download_count >= link.max_downloads:
            return "limit_reached"
        return None if files else "not_active"

    # -- checked POSTs --------------------------------------------------------------------

    async def checked_post(
        self, request: web.Request, applies: Callable[[LinkState], bool] = _any_link,
        target: Mapping[str, str] | None = None,
    ) -> tuple[LinkState, dict[str, str]] | web.StreamResponse:
        """The link and the form of a POST that passed the same-site and CSRF checks; or the
        answer instead: the link's refusal, the landing page when the form does not apply to
        this link (`applies` is False), or the refusal of the POST itself. `target` goes into
        the refusal's audit event."""
        state = await self.resolve(request)
        if state.refusal:
            return await self.refuse(request, state, state.refusal, target)
        assert state.link is not None and state.transfer is not None
        if not applies(state):
            return self.see_landing(request)
        form = await read_form(request)
        problem = self.post_problem(request, state.link.id, form)
        if problem:
            return await self.refuse(request, state, problem, target)
        return state, form

    def post_problem(self, request: web.Request, subject: str, form: Mapping[str, str]
                     ) -> str | None:
        """None when a POST comes from our own page about `subject`; else the refusal reason."""
        headers = request.headers
        if cross_site(headers.get("Origin"), headers.get("Referer"), self._own_origins(request),
                      fetch_site=headers.get("Sec-Fetch-Site")):
            return "cross_site"
        token, now = form.get("csrf", ""), self._clock()
        problems = (csrf_problem(secret, subject, token, now) for secret in self._secrets)
        # A token signed by any of our secrets is judged by its time; else it is invalid.
        return next((p for p in problems if p != "csrf_invalid"), "csrf_invalid")

    def _own_origins(self, request: web.Request) -> set[str]:
        """Where our own pages are: public_url, and the listen address for a browser that
        opened the portal directly (the socket the request arrived on). Never the Host header:
        the client writes it, and a forged one would make the attacker's origin our own."""
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        origins = {self._public_origin, listen_origin(request.scheme, sockname)}
        return {origin for origin in origins if origin is not None}

    def csrf_token(self, subject: str, now: datetime) -> str:
        """The token a form about `subject` (a link id, or a management subject) carries."""
        return make_csrf_token(self._secret, subject, now)

    # -- per-link proofs: signed cookies --------------------------------------------------

    def verified(self, request: web.Request, state: LinkState) -> bool:
        """Whether this browser proved, by a one-time code, to hold the link's mailbox (or
        the transfer does not ask for that)."""
        assert state.link is not None
        if not state.verify_recipient:
            return True
        cookie = request.cookies.get(VERIFIED_COOKIE, "")
        now = self._clock()
        return any(verified_valid(secret, state.link.id, cookie, now) for secret in self._secrets)

    def has_password_session(self, request: web.Request, state: LinkState) -> bool:
        """Whether this browser gave the download password (or the transfer has none)."""
        assert state.link is not None and state.transfer is not None
        if state.transfer.password_hash is None:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        now = self._clock()
        return any(session_valid(secret, state.link.id, cookie, now) for secret in self._secrets)

    def missing_proof(self, request: web.Request, state: LinkState) -> str | None:
        """Each proof the transfer asks for is needed; neither stands in for the other."""
        if not self.verified(request, state):
            return "verification_required"
        if not self.has_password_session(request, state):
            return "password_required"
        return None

    def grant_password_session(self, response: web.StreamResponse, request: web.Request,
                               link_id: str, now: datetime) -> None:
        """The cookie that proves the download password, for the session's lifetime."""
        value = make_session(self._secret, link_id, now + self._settings.session_lifetime)
        self._set_link_cookie(response, request, SESSION_COOKIE, value)

    def grant_verified(self, response: web.StreamResponse, request: web.Request,
                       link_id: str, now: datetime) -> None:
        """The cookie that proves a one-time code, for the session's lifetime."""
        value = make_verified(self._secret, link_id, now + self._settings.session_lifetime)
        self._set_link_cookie(response, request, VERIFIED_COOKIE, value)

    def _set_link_cookie(self, response: web.StreamResponse, request: web.Request, name: str,
                         value: str) -> None:
        self._pages.set_cookie(
            response, request, name, value,
            max_age=int(self._settings.session_lifetime.total_seconds()), samesite="Strict",
        )

    # -- refusals, audit, metrics ---------------------------------------------------------

    async def refuse(
        self, request: web.Request, state: LinkState, reason: str,
        target: Mapping[str, str] | None = None,
    ) -> web.Response:
        """Record the refusal and answer with its page. 'locked' is answered by the landing
        page instead (portal.py: record_refusal, then that page)."""
        if reason == "locked":
            raise ValueError("a password lock-out is answered by the landing page")
        status = await self.record_refusal(request, state, reason, target)
        if status == 404:
            return self._pages.error_page(request, 404)
        if status == 410:
            return self._gone_page(request, state, reason)
        if reason == "guessing":
            wait = self._guesses.wait(self.client(request)["client_ip"], self._clock())
            return self._pages.guessing_page(request, wait)
        messages = {"password_required": "forbidden_password",
                    "verification_required": "forbidden_verify"}
        return self._pages.error_page(request, status,
                                      message=messages.get(reason, "forbidden_csrf"))

    async def record_refusal(
        self, request: web.Request, state: LinkState, reason: str,
        target: Mapping[str, str] | None = None,
    ) -> int:
        """Count the refusal and, when the token reached a link, audit it; its status."""
        status = REFUSAL_STATUS[reason]
        kind = "download.failed" if status == 500 else "download.refused"
        self.emit("refusal", {"reason": reason})
        # Unknown tokens reach no link: audited rows for them would let anyone fill the table.
        if state.link is not None:
            detail = {**(target or {}), "reason": reason, "method": request.method}
            await self.audit(kind, request, state, detail)
        return status

    async def audit(self, kind: str, request: web.Request, state: LinkState,
                    detail: Mapping[str, Any]) -> None:
        """An audit event about the link, with who asked."""
        link = state.link
        assert link is not None
        await asyncio.to_thread(
            self._db.append_event, kind, self._clock(), transfer_id=link.transfer_id,
            link_id=link.id, recipient=link.recipient, detail={**self.client(request), **detail},
        )

    def client(self, request: web.Request) -> dict[str, str]:
        """Who asked, for the audit trail."""
        forwarded = request.headers.getall("X-Forwarded-For", [])
        return {
            "client_ip": client_ip(request.remote, forwarded, self._settings.trusted_proxies),
            "user_agent": request.headers.get("User-Agent", "")[:_MAX_USER_AGENT_CHARS],
        }

    def emit(self, kind: str, labels: dict[str, str]) -> None:
        """A metric event; a failing hook is logged, never the request's problem."""
        if self._events_hook is None:
            return
        try:
            self._events_hook(kind, labels)
        except Exception:
            log.exception("portal: events hook failed for %s", kind)

    def see_landing(self, request: web.Request) -> web.Response:
        """303 back to the link's landing page."""
        token = request.match_info["token"]
        return web.Response(status=303, headers={"Location": f"/d/{quote(token, safe='')}"})

    def _gone_page(self, request: web.Request, state: LinkState, reason: str) -> web.Response:
        assert state.transfer is not None
        locale = self._pages.locale(request)
        return self._pages.render(
            request, "gone.html", 410, reason=reason, sender=state.transfer.sender,
            expired_at=self._pages.local(state.transfer.expires_at, locale),
        )

    # -- management tokens (the sender's page) --------------------------------------------

    async def find_management(self, request: web.Request, find: Callable[[str], Target | None]
                              ) -> Target | web.Response:
        """What `find` makes of the request's management token, or the refusal: 429 for a
        client that has guessed too many tokens (counted with the download links' guesses),
        else the common 404. Neither is audited: no transfer was reached."""
        found = await self.look_up(request, find)
        if isinstance(found, Throttled):
            return self._pages.guessing_page(request, found.wait)
        if found is None:
            return self._pages.error_page(request, 404)
        return found

    async def checked_management_post(
        self, request: web.Request, find: Callable[[str], Target | None]
    ) -> tuple[Target, dict[str, str]] | web.Response:
        """The transfer and the form of a management POST that passed the same-site and CSRF
        checks, or the page that refuses it (audited as `manage.refused`)."""
        managed = await self.find_management(request, find)
        if isinstance(managed, web.Response):
            return managed
        form = await read_form(request)
        transfer_id = managed.transfer.id
        problem = self.post_problem(request, management_csrf_subject(transfer_id), form)
        if problem:
            await asyncio.to_thread(
                self._db.append_event, "manage.refused", self._clock(),
                transfer_id=transfer_id,
                detail={**self.client(request), "reason": problem, "method": request.method},
            )
            return self._pages.error_page(request, 403, message="forbidden_manage")
        return managed, form
