"""The download portal: the page behind each recipient's link, and the downloads it offers.

GET /d/{token} only shows (mail scanners open every link); bytes leave only on a POST that
carries a CSRF token, and each such POST counts as one download (queuing the sender's
download notice, if they want one, in the same commit). A transfer that asks for it opens
only to a visitor who proved with a mailed one-time code (otp.py) to hold the recipient's
mailbox. Every token is hashed and looked up, well-formed or not, and every refusal looks
the same as an unknown link where it must. SQLite, scrypt and decryption run in worker
threads, never on the event loop. The downloads themselves are download_route.py; the
sender's management page is manage.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.config import PortalSettings
from gateway.pipeline.notice import display_name, human_size
from gateway.store.blobs import BlobStore
from gateway.store.controls import ControlsStore, OtpState, TransferControls
from gateway.store.db import Database, FileRow, LinkRow, PasswordGuardRow, TransferRow
from gateway.store.outbox import OutboxStore
from gateway.store.passwords import hash_token, verify_password
from gateway.store.unlocks import UnlockStore
from gateway.unlock.opening import TransferOpener
from gateway.web.download import download_name
from gateway.web.download_route import DownloadRoute
from gateway.web.i18n import Translator
from gateway.web.manage import ManagePages
from gateway.web.otp import VERIFIED_COOKIE, OtpGate, mask_address
from gateway.web.pages import Pages, client_details, post_problem, read_form
from gateway.web.ratelimit import GuessThrottle
from gateway.web.security import (
    make_csrf_token,
    make_header_hook,
    make_session,
    session_valid,
    verified_valid,
)

log = logging.getLogger("gateway.web")

EventsHook = Callable[[str, dict], None]
# seal(outbox item id, plaintext) -> sealed bytes, bound to that item.
Sealer = Callable[[str, bytes], bytes]
SESSION_COOKIE = "ppap_session"
_MAX_PASSWORD_CHARS = 1024
# Refusal reason → status. Unknown and not-yet-usable links are indistinguishable (404).
REFUSAL_STATUS = {
    "not_found": 404, "not_active": 404, "no_such_file": 404,
    "revoked": 410, "expired": 410, "limit_reached": 410, "blocked": 410,
    "cross_site": 403, "csrf_missing": 403, "csrf_invalid": 403, "csrf_expired": 403,
    "password_required": 403, "verification_required": 403, "locked": 429,
    "otp_throttled": 429, "guessing": 429, "storage": 500,
}
# The window of PortalSettings.max_unknown_tokens.
GUESS_WINDOW = timedelta(minutes=10)


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


def build_portal_app(
    *, settings: PortalSettings, db: Database, blobs: BlobStore, templates_dir: Path,
    timezone: ZoneInfo, secret: bytes, clock: Callable[[], datetime],
    events_hook: EventsHook | None = None, outbox: OutboxStore | None = None,
    controls: ControlsStore | None = None, seal: Sealer | None = None,
    wake_outbox: Callable[[], None] | None = None, opener: TransferOpener | None = None,
    password_key: bytes | None = None,
) -> web.Application:
    """The portal as an aiohttp application; the caller runs it (web.AppRunner, TCPSite).

    `outbox` and `controls` default to repositories over `db`. Without `seal` no one-time
    code can be sent, so links that need one stay closed. `wake_outbox()` (called on the
    event loop) tells the outbox worker that something is due now. Without `opener` the
    management page offers no unlock form. `password_key` checks generated download
    passwords (keyed hashes); without it only scrypt hashes can match."""
    if len(secret) < 32:
        raise ValueError("the portal secret must be at least 32 bytes")
    pages = Pages(templates_dir, timezone, settings.public_url.startswith("https://"))
    controls = ControlsStore(db) if controls is None else controls
    outbox = OutboxStore(db) if outbox is None else outbox
    wake = wake_outbox or _nothing_to_wake
    portal = Portal(settings, db, blobs, pages, secret, clock, events_hook, controls, outbox,
                    wake, password_key)
    codes = OtpGate(portal, controls, outbox, seal, wake)
    downloads = DownloadRoute(portal, blobs, outbox, wake)
    manage = ManagePages(settings, db, pages, controls, outbox, secret, clock, opener,
                         portal.guesses)
    app = web.Application(middlewares=[make_error_pages(pages)])
    app.on_response_prepare.append(make_header_hook(pages.https))
    app.router.add_get("/d/{token}", portal.landing)
    app.router.add_post("/d/{token}/password", portal.password)
    app.router.add_post("/d/{token}/otp", codes.send)
    app.router.add_post("/d/{token}/otp/verify", codes.verify)
    app.router.add_post("/d/{token}/f/{file_id}", downloads.download_file)
    app.router.add_post("/d/{token}/all", downloads.download_all)
    app.router.add_get("/m/{token}", manage.page)
    app.router.add_post("/m/{token}/revoke", manage.revoke)
    app.router.add_post("/m/{token}/extend", manage.extend)
    app.router.add_post("/m/{token}/unlock", manage.unlock)
    app.router.add_static("/static/", templates_dir / "web" / "static", follow_symlinks=False)
    return app


def _route_of(request: web.Request) -> str:
    info = request.match_info.get_info()
    return str(info.get("formatter") or info.get("path") or info.get("prefix") or "?")


def _nothing_to_wake() -> None:
    """No outbox worker to tell: it finds due items on its next poll."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_error_pages(pages: Pages) -> Callable[[web.Request, Handler],
                                               Awaitable[web.StreamResponse]]:
    """Middleware: every error becomes one of our pages; never a traceback."""

    @web.middleware
    async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else {}
            return pages.error_page(request, error.status, headers=headers)
        except Exception:
            # The route, not the path: tokens stay out of the log.
            log.exception("portal: %s %s failed", request.method, _route_of(request))
            return pages.error_page(request, 500)

    return error_pages


class Portal:
    def __init__(
        self, settings: PortalSettings, db: Database, blobs: BlobStore, pages: Pages,
        secret: bytes, clock: Callable[[], datetime], events_hook: EventsHook | None,
        controls: ControlsStore, outbox: OutboxStore, wake_outbox: Callable[[], None],
        password_key: bytes | None = None,
    ):
        self._password_key = password_key
        self.settings = settings
        self.pages = pages
        self.db = db
        self.secret = secret
        self.clock = clock
        self._blobs = blobs
        self._events_hook = events_hook
        self._controls = controls
        self._unlocks = UnlockStore(db)
        self._outbox = outbox
        self._wake_outbox = wake_outbox
        self.guesses = GuessThrottle(settings.max_unknown_tokens, GUESS_WINDOW)

    # -- routes ---------------------------------------------------------------------------

    async def landing(self, request: web.Request) -> web.StreamResponse:
        state = await self.resolve(request)
        if state.refusal:
            return await self.refuse(request, state, state.refusal)
        return self.landing_page(request, state, 200)

    async def password(self, request: web.Request) -> web.StreamResponse:
        checked = await self.checked_post(
            request, lambda state: state.transfer.password_hash is not None
        )
        if isinstance(checked, web.StreamResponse):
            return checked
        state, form = checked
        assert state.link is not None and state.transfer is not None
        now = self.clock()
        limits = self.settings
        link_id = state.link.id
        if not await asyncio.to_thread(
            self.db.reserve_password_attempt, link_id, now, limits.password_max_attempts
        ):
            return await self.refuse(request, state, "locked")
        typed = form.get("password", "")
        correct = len(typed) <= _MAX_PASSWORD_CHARS and await asyncio.to_thread(
            verify_password, typed, state.transfer.password_hash, self._password_key
        )
        locked_until = await asyncio.to_thread(
            self.db.settle_password_attempt, link_id, correct, now,
            limits.password_max_attempts, limits.password_lockout,
        )
        if correct:
            await self.audit("password.accepted", request, state, {})
            response = self.see_landing(request)
            self.set_link_cookie(response, request, SESSION_COOKIE,
                                 make_session(self.secret, link_id, now + limits.session_lifetime))
            return response
        await self.audit("password.failed", request, state, {})
        if locked_until is not None:
            self.emit("password_locked", {})
            await self.audit("password.locked", request, state, {
                "locked_until": locked_until.isoformat(),
                "attempts": limits.password_max_attempts,
            })
            return await self.refuse(request, state, "locked")
        guard = await asyncio.to_thread(self.db.password_guard, link_id)
        left = max(limits.password_max_attempts - guard.failures, 0)
        alert = Translator(self.pages.locale(request))("password_wrong", left=left)
        return self.landing_page(request, state, 403, alert=alert)

    # -- looking a token up ---------------------------------------------------------------

    async def resolve(self, request: web.Request) -> LinkState:
        address = self.client(request)["client_ip"]
        if self.guesses.wait(address, self.clock()) is not None:
            return LinkState(None, None, (), None, "guessing")
        state = await asyncio.to_thread(self._resolve_now, request.match_info["token"])
        if state.link is None and self.guesses.missed(address, self.clock()):
            log.warning("portal: %s tried too many unknown links; throttled", address)
        return state

    def _resolve_now(self, token: str) -> LinkState:
        # Always hashed and queried, however the token looks: no shortcut to time.
        link = self.db.link_by_token_hash(hash_token(token))
        if link is None:
            return LinkState(None, None, (), None, "not_found")
        transfer = self.db.transfer(link.transfer_id)
        served, blocked = self._unlocks.served(link.transfer_id) if transfer else ([], False)
        files = tuple(served)
        guard = self.db.password_guard(link.id) if transfer and transfer.password_hash else None
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
        if transfer.state == "purged" or self.clock() >= transfer.expires_at:
            return "expired"
        if link.max_downloads and link.download_count >= link.max_downloads:
            return "limit_reached"
        return None if files else "not_active"

    # -- what a POST and a download need --------------------------------------------------

    async def checked_post(
        self, request: web.Request, applies: Callable[[LinkState], bool]
    ) -> tuple[LinkState, dict[str, str]] | web.StreamResponse:
        """The link and the form of a POST that passed the same-site and CSRF checks; or the
        answer instead: the link's refusal, the landing page when the form does not apply to
        this link (`applies` is False), or the refusal of the POST itself."""
        state = await self.resolve(request)
        if state.refusal:
            return await self.refuse(request, state, state.refusal)
        assert state.link is not None and state.transfer is not None
        if not applies(state):
            return self.see_landing(request)
        form = await read_form(request)
        problem = self.post_problem(request, state.link, form)
        if problem:
            return await self.refuse(request, state, problem)
        return state, form

    def post_problem(self, request: web.Request, link: LinkRow, form: Mapping[str, str]
                     ) -> str | None:
        return post_problem(request, settings=self.settings, secret=self.secret,
                            subject=link.id, form=form, now=self.clock())

    def verified(self, request: web.Request, state: LinkState) -> bool:
        """Whether this browser proved, by a one-time code, to hold the link's mailbox (or
        the transfer does not ask for that)."""
        assert state.link is not None
        if not state.verify_recipient:
            return True
        cookie = request.cookies.get(VERIFIED_COOKIE, "")
        return verified_valid(self.secret, state.link.id, cookie, self.clock())

    def _has_password_session(self, request: web.Request, state: LinkState) -> bool:
        assert state.link is not None and state.transfer is not None
        if state.transfer.password_hash is None:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return session_valid(self.secret, state.link.id, cookie, self.clock())

    def missing_proof(self, request: web.Request, state: LinkState) -> str | None:
        """Each proof the transfer asks for is needed; neither stands in for the other."""
        if not self.verified(request, state):
            return "verification_required"
        if not self._has_password_session(request, state):
            return "password_required"
        return None

    def set_link_cookie(self, response: web.StreamResponse, request: web.Request, name: str,
                        value: str) -> None:
        self.pages.set_cookie(
            response, request, name, value,
            max_age=int(self.settings.session_lifetime.total_seconds()), samesite="Strict",
        )

    # -- refusals, audit, metrics ---------------------------------------------------------

    async def refuse(
        self, request: web.Request, state: LinkState, reason: str,
        target: Mapping[str, str] | None = None,
    ) -> web.Response:
        status = REFUSAL_STATUS[reason]
        kind = "download.failed" if status == 500 else "download.refused"
        self.emit("refusal", {"reason": reason})
        # Unknown tokens reach no link: audited rows for them would let anyone fill the table.
        if state.link is not None:
            detail = {**(target or {}), "reason": reason, "method": request.method}
            await self.audit(kind, request, state, detail)
        if status == 404:
            return self.pages.error_page(request, 404)
        if status == 410:
            return self._gone_page(request, state, reason)
        if reason == "guessing":
            wait = self.guesses.wait(self.client(request)["client_ip"], self.clock())
            return self.pages.guessing_page(request, wait)
        if reason == "locked" and state.link is not None:
            guard = await asyncio.to_thread(self.db.password_guard, state.link.id)
            return self._locked_page(request, state, guard)
        messages = {"password_required": "forbidden_password",
                    "verification_required": "forbidden_verify"}
        return self.pages.error_page(request, status,
                                     message=messages.get(reason, "forbidden_csrf"))

    async def audit(self, kind: str, request: web.Request, state: LinkState,
                    detail: Mapping[str, Any]) -> None:
        link = state.link
        assert link is not None
        await asyncio.to_thread(
            self.db.append_event, kind, self.clock(), transfer_id=link.transfer_id,
            link_id=link.id, recipient=link.recipient, detail={**self.client(request), **detail},
        )

    def client(self, request: web.Request) -> dict[str, str]:
        return client_details(request, self.settings)

    def emit(self, kind: str, labels: dict[str, str]) -> None:
        if self._events_hook is None:
            return
        try:
            self._events_hook(kind, labels)
        except Exception:
            log.exception("portal: events hook failed for %s", kind)

    # -- pages ----------------------------------------------------------------------------

    def see_landing(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        return web.Response(status=303, headers={"Location": f"/d/{quote(token, safe='')}"})

    def _gone_page(self, request: web.Request, state: LinkState, reason: str) -> web.Response:
        assert state.transfer is not None
        locale = self.pages.locale(request)
        return self.pages.render(
            request, "gone.html", 410, reason=reason, sender=state.transfer.sender,
            expired_at=self.pages.local(state.transfer.expires_at, locale),
        )

    def _locked_page(self, request: web.Request, state: LinkState, guard: PasswordGuardRow
                     ) -> web.Response:
        now = self.clock()
        # No lock yet means parallel attempts hold the last tries: "wait" all the same.
        until = guard.locked_until or now
        response = self.landing_page(request, state, 429, locked_until=until)
        response.headers["Retry-After"] = str(max(int((until - now).total_seconds()), 1))
        return response

    def landing_page(self, request: web.Request, state: LinkState, status: int, *,
                     alert: str | None = None, locked_until: datetime | None = None
                     ) -> web.Response:
        link, transfer = state.link, state.transfer
        assert link is not None and transfer is not None
        locale = self.pages.locale(request)
        t = Translator(locale)
        now = self.clock()
        needs_password = not self._has_password_session(request, state)
        if locked_until is None and needs_password and state.guard and state.guard.locked_until:
            locked_until = state.guard.locked_until if state.guard.locked_until > now else None
        verify = None if self.verified(request, state) else self._verify_context(state, locale)
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
        return self.pages.render(
            request, "landing.html", status, transfer=transfer,
            recipient=verify["address"] if verify else link.recipient,
            files=files, expires=self.pages.local(transfer.expires_at, locale),
            downloads_left=t("unlimited") if link.max_downloads == 0 else t("times", count=left),
            csrf=make_csrf_token(self.secret, link.id, now),
            verify=verify, needs_password=needs_password, alert=alert,
            locked_until=self.pages.local(locked_until, locale) if locked_until else None,
            action_base=f"/d/{quote(request.match_info['token'], safe='')}",
        )

    def _verify_context(self, state: LinkState, locale: str) -> dict[str, Any]:
        """The code form: to whom the code goes (masked), and the live code's end if any."""
        assert state.link is not None
        otp = state.otp
        live = otp is not None and otp.usable(self.clock(), self.settings.otp_max_attempts)
        return {
            "address": mask_address(state.link.recipient),
            "code_sent": live,
            "until": self.pages.local(otp.expires_at, locale) if live and otp else None,
        }
