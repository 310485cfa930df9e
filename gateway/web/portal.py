"""The download portal as an aiohttp application, and its landing and password routes.

GET /d/{token} only shows (mail scanners open every link); bytes leave only on a POST that
carries a CSRF token, and each such POST counts as one download (download_route.py). A
transfer that asks for it opens only to a visitor who proved with a mailed one-time code
(otp.py) to hold the recipient's mailbox. Every route passes the link gate (link_gate.py)
first: token lookup, refusals, checked POSTs, audit, per-link cookies. SQLite, scrypt and
decryption run in worker threads, never on the event loop, and so do the throttles, which
count in the store. The sender's management page is
manage.py.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Awaitable, Callable
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.config import PortalSettings
from gateway.store.blobs import BlobStore
from gateway.store.controls import ControlsStore
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from gateway.store.passwords import verify_password
from gateway.store.throttles import ThrottleStore
from gateway.store.unlocks import UnlockStore
from gateway.unlock.opening import TransferOpener
from gateway.web.download_route import DownloadRoute
from gateway.web.i18n import Translator
from gateway.web.landing import LandingPage
from gateway.web.link_gate import (
    GUESS_WINDOW,
    EventsHook,
    LinkGate,
    LinkState,
)
from gateway.web.manage import ManagePages
from gateway.web.otp import OtpRoutes
from gateway.web.pages import Pages
from gateway.web.ratelimit import GuessThrottle
from gateway.web.security import make_header_hook

__all__ = ["build_portal_app"]

log = logging.getLogger("gateway.web")

# seal(outbox item id, plaintext) -> sealed bytes, bound to that item.
Sealer = Callable[[str, bytes], bytes]
_MAX_PASSWORD_CHARS = 1024


def build_portal_app(
    *, settings: PortalSettings, db: Database, blobs: BlobStore, templates_dir: Path,
    timezone: ZoneInfo, secret: bytes, clock: Callable[[], datetime],
    events_hook: EventsHook | None = None, outbox: OutboxStore | None = None,
    controls: ControlsStore | None = None, seal: Sealer | None = None,
    wake_outbox: Callable[[], None] | None = None, opener: TransferOpener | None = None,
    password_key: bytes | None = None, retired_secrets: tuple[bytes, ...] = (),
    retired_password_keys: tuple[bytes, ...] = (),
) -> web.Application:
    """The portal as an aiohttp application; the caller runs it (web.AppRunner, TCPSite).

    `outbox` and `controls` default to repositories over `db`. Without `seal` no one-time
    code can be sent, so links that need one stay closed. `wake_outbox()` (called on the
    event loop) tells the outbox worker that something is due now. Without `opener` the
    management page offers no unlock form. `password_key` checks generated download
    passwords (keyed hashes); without it only scrypt hashes can match. During a master-key
    rotation `retired_secrets` and `retired_password_keys` (derived from the retired keys)
    still check what was made before it: cookies, forms, codes and passwords keep working."""
    if len(secret) < 32:
        raise ValueError("the portal secret must be at least 32 bytes")
    pages = Pages(templates_dir, timezone, settings.public_url.startswith("https://"))
    controls = ControlsStore(db) if controls is None else controls
    outbox = OutboxStore(db) if outbox is None else outbox
    unlocks = UnlockStore(db)
    # Counted in the store: every worker and node together gives a client each limit once.
    throttles = ThrottleStore(db)
    wake = wake_outbox or _nothing_to_wake
    gate = LinkGate(
        settings=settings, db=db, controls=controls, unlocks=unlocks, pages=pages,
        guesses=GuessThrottle(throttles, settings.max_unknown_tokens, GUESS_WINDOW),
        secret=secret, retired_secrets=retired_secrets, clock=clock, events_hook=events_hook,
    )
    landing = LandingPage(gate=gate, pages=pages, clock=clock,
                          otp_max_attempts=settings.otp_max_attempts)
    links = LandingRoutes(gate=gate, landing=landing, pages=pages, db=db, settings=settings,
                          clock=clock, password_key=password_key,
                          retired_password_keys=retired_password_keys)
    codes = OtpRoutes(gate=gate, landing=landing, pages=pages, db=db, controls=controls,
                      outbox=outbox, settings=settings, secret=secret,
                      retired_secrets=retired_secrets, clock=clock, seal=seal,
                      wake_outbox=wake, throttles=throttles)
    downloads = DownloadRoute(gate=gate, db=db, blobs=blobs, outbox=outbox, timezone=timezone,
                              clock=clock, wake_outbox=wake)
    manage = ManagePages(gate=gate, db=db, pages=pages, controls=controls, unlocks=unlocks,
                         outbox=outbox, clock=clock, throttles=throttles, opener=opener)
    app = web.Application(middlewares=[make_error_pages(pages)])
    app.on_response_prepare.append(make_header_hook(pages.https))
    app.router.add_get("/d/{token}", links.landing)
    app.router.add_post("/d/{token}/password", links.password)
    app.router.add_post("/d/{token}/otp", codes.send)
    app.router.add_post("/d/{token}/otp/verify", codes.verify)
    app.router.add_post("/d/{token}/f/{file_id}", downloads.download_file)
    app.router.add_post("/d/{token}/all", downloads.download_all)
    app.router.add_get("/m/{token}", manage.page)
    app.router.add_post("/m/{token}/revoke", manage.revoke)
    app.router.add_post("/m/{token}/extend", manage.extend)
    app.router.add_post("/m/{token}/unlock", manage.unlock)
    app.router.add_post("/m/{token}/unlock-codes", manage.unlock_codes)
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


class LandingRoutes:
    """GET /d/{token} (the landing page) and POST /d/{token}/password (the download password,
    a few tries, then locked for a while)."""

    def __init__(self, *, gate: LinkGate, landing: LandingPage, pages: Pages, db: Database,
                 settings: PortalSettings, clock: Callable[[], datetime],
                 password_key: bytes | None = None,
                 retired_password_keys: tuple[bytes, ...] = ()):
        self._gate = gate
        self._landing = landing
        self._pages = pages
        self._db = db
        self._settings = settings
        self._clock = clock
        self._password_key = password_key
        self._retired_password_keys = retired_password_keys

    async def landing(self, request: web.Request) -> web.StreamResponse:
        state = await self._gate.resolve(request)
        if state.refusal:
            return await self._gate.refuse(request, state, state.refusal)
        return self._landing.render(request, state, 200)

    async def password(self, request: web.Request) -> web.StreamResponse:
        gate = self._gate
        checked = await gate.checked_post(
            request, lambda state: state.transfer.password_hash is not None
        )
        if isinstance(checked, web.StreamResponse):
            return checked
        state, form = checked
        assert state.link is not None and state.transfer is not None
        now = self._clock()
        limits = self._settings
        link_id = state.link.id
        if not await asyncio.to_thread(
            self._db.reserve_password_attempt, link_id, now, limits.password_max_attempts
        ):
            return await self._locked(request, state)
        typed = form.get("password", "")
        correct = len(typed) <= _MAX_PASSWORD_CHARS and await asyncio.to_thread(
            verify_password, typed, state.transfer.password_hash, self._password_key,
            self._retired_password_keys,
        )
        locked_until = await asyncio.to_thread(
            self._db.settle_password_attempt, link_id, correct, now,
            limits.password_max_attempts, limits.password_lockout,
        )
        if correct:
            await gate.audit("password.accepted", request, state, {})
            response = gate.see_landing(request)
            gate.grant_password_session(response, request, link_id, now)
            return response
        await gate.audit("password.failed", request, state, {})
        if locked_until is not None:
            gate.emit("password_locked", {})
            await gate.audit("password.locked", request, state, {
                "locked_until": locked_until.isoformat(),
                "attempts": limits.password_max_attempts,
            })
            return await self._locked(request, state)
        guard = await asyncio.to_thread(self._db.password_guard, link_id)
        left = max(limits.password_max_attempts - guard.failures, 0)
        alert = Translator(self._pages.locale(request))("password_wrong", left=left)
        return self._landing.render(request, state, 403, alert=alert)

    async def _locked(self, request: web.Request, state: LinkState) -> web.Response:
        """The refusal of a locked password form: the landing page, saying until when (429)."""
        assert state.link is not None
        await self._gate.record_refusal(request, state, "locked")
        guard = await asyncio.to_thread(self._db.password_guard, state.link.id)
        now = self._clock()
        # No lock yet means parallel attempts hold the last tries: "wait" all the same.
        until = guard.locked_until or now
        response = self._landing.render(request, state, 429, locked_until=until)
        response.headers["Retry-After"] = str(max(int((until - now).total_seconds()), 1))
        return response
