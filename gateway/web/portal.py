"""The download portal: the page behind each recipient's link, and the downloads it offers.

GET /d/{token} only shows (mail scanners open every link); bytes leave only on a POST that
carries a CSRF token, and each such POST counts as one download. Every token is hashed and
looked up, well-formed or not, and every refusal looks the same as an unknown link where
it must. SQLite, scrypt and decryption run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from gateway.config import PortalSettings
from gateway.pipeline.notice import display_name, format_expiry, human_size
from gateway.store.blobs import BlobIntegrityError, BlobStore
from gateway.store.db import Database, FileRow, LinkRow, PasswordGuardRow, TransferRow
from gateway.store.passwords import hash_token, verify_password
from gateway.web.download import (
    STORAGE_ERRORS,
    FileSource,
    PieceSource,
    ZipSource,
    close_source,
    content_disposition,
    download_name,
    next_piece,
    stream_body,
)
from gateway.web.i18n import LOCALES, Translator, choose_locale
from gateway.web.security import (
    client_ip,
    cross_site,
    csrf_problem,
    make_csrf_token,
    make_header_hook,
    make_session,
    origin_of,
    session_valid,
)

log = logging.getLogger("gateway.web")

EventsHook = Callable[[str, dict], None]
SESSION_COOKIE = "ppap_session"
LANG_COOKIE_AGE = 365 * 24 * 3600
_MAX_PASSWORD_CHARS = 1024
_MAX_USER_AGENT_CHARS = 256
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Refusal reason → status. Unknown and not-yet-usable links are indistinguishable (404).
REFUSAL_STATUS = {
    "not_found": 404, "not_active": 404, "no_such_file": 404,
    "revoked": 410, "expired": 410, "limit_reached": 410,
    "cross_site": 403, "csrf_missing": 403, "csrf_invalid": 403, "csrf_expired": 403,
    "password_required": 403, "locked": 429, "storage": 500,
}


@dataclass(frozen=True)
class LinkState:
    """What a token leads to; `refusal` says why nothing may be offered (None: all is well)."""

    link: LinkRow | None
    transfer: TransferRow | None
    files: tuple[FileRow, ...]
    guard: PasswordGuardRow | None
    refusal: str | None


def build_portal_app(
    *, settings: PortalSettings, db: Database, blobs: BlobStore, templates_dir: Path,
    timezone: ZoneInfo, secret: bytes, clock: Callable[[], datetime],
    events_hook: EventsHook | None = None,
) -> web.Application:
    """The portal as an aiohttp application; the caller runs it (web.AppRunner, TCPSite)."""
    if len(secret) < 32:
        raise ValueError("the portal secret must be at least 32 bytes")
    portal = Portal(settings, db, blobs, templates_dir, timezone, secret, clock, events_hook)
    app = web.Application(middlewares=[make_error_pages(portal)])
    app.on_response_prepare.append(make_header_hook(portal.https))
    app.router.add_get("/d/{token}", portal.landing)
    app.router.add_post("/d/{token}/password", portal.password)
    app.router.add_post("/d/{token}/f/{file_id}", portal.download_file)
    app.router.add_post("/d/{token}/all", portal.download_all)
    app.router.add_static("/static/", templates_dir / "web" / "static", follow_symlinks=False)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_error_pages(portal: Portal) -> Callable[[web.Request, Handler],
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
            return portal.error_page(request, error.status, headers=headers)
        except Exception:
            log.exception("portal: %s %s failed", request.method, request.path)
            return portal.error_page(request, 500)

    return error_pages


class Portal:
    def __init__(
        self, settings: PortalSettings, db: Database, blobs: BlobStore, templates_dir: Path,
        timezone: ZoneInfo, secret: bytes, clock: Callable[[], datetime],
        events_hook: EventsHook | None,
    ):
        self.settings = settings
        self.https = settings.public_url.startswith("https://")
        self._db = db
        self._blobs = blobs
        self._timezone = timezone
        self._secret = secret
        self._clock = clock
        self._events_hook = events_hook
        self._public_origin = origin_of(settings.public_url)
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
        )

    # -- routes ---------------------------------------------------------------------------

    async def landing(self, request: web.Request) -> web.StreamResponse:
        state = await self._resolve(request)
        if state.refusal:
            return await self._refuse(request, state, state.refusal)
        return self._landing_page(request, state, 200)

    async def password(self, request: web.Request) -> web.StreamResponse:
        state = await self._resolve(request)
        if state.refusal:
            return await self._refuse(request, state, state.refusal)
        assert state.link is not None and state.transfer is not None
        if state.transfer.password_hash is None:
            return self._see_landing(request)
        form = await self._form(request)
        problem = self._post_problem(request, state.link, form)
        if problem:
            return await self._refuse(request, state, problem)
        now = self._clock()
        limits = self.settings
        link_id = state.link.id
        if not await asyncio.to_thread(
            self._db.reserve_password_attempt, link_id, now, limits.password_max_attempts
        ):
            return await self._refuse(request, state, "locked")
        typed = form.get("password", "")
        correct = len(typed) <= _MAX_PASSWORD_CHARS and await asyncio.to_thread(
            verify_password, typed, state.transfer.password_hash
        )
        locked_until = await asyncio.to_thread(
            self._db.settle_password_attempt, link_id, correct, now,
            limits.password_max_attempts, limits.password_lockout,
        )
        if correct:
            await self._audit("password.accepted", request, state, {})
            response = self._see_landing(request)
            expires = now + limits.session_lifetime
            self._set_cookie(
                response, request, SESSION_COOKIE, make_session(self._secret, link_id, expires),
                max_age=int(limits.session_lifetime.total_seconds()), samesite="Strict",
            )
            return response
        await self._audit("password.failed", request, state, {})
        if locked_until is not None:
            self._emit("password_locked", {})
            await self._audit("password.locked", request, state, {
                "locked_until": locked_until.isoformat(),
                "attempts": limits.password_max_attempts,
            })
            return await self._refuse(request, state, "locked")
        guard = await asyncio.to_thread(self._db.password_guard, link_id)
        left = max(limits.password_max_attempts - guard.failures, 0)
        alert = Translator(self._locale(request))("password_wrong", left=left)
        return self._landing_page(request, state, 403, alert=alert)

    async def download_file(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, request.match_info["file_id"])

    async def download_all(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, None)

    # -- downloading ----------------------------------------------------------------------

    async def _download(self, request: web.Request, file_id: str | None) -> web.StreamResponse:
        target = {"file_id": file_id or "all"}
        state = await self._resolve(request)
        if state.refusal:
            return await self._refuse(request, state, state.refusal, target)
        assert state.link is not None and state.transfer is not None
        problem = self._post_problem(request, state.link, await self._form(request))
        if problem is None and not self._has_session(request, state):
            problem = "password_required"
        chosen = [f for f in state.files if file_id is None or f.id == file_id]
        if problem is None and (not chosen or (file_id is None and len(chosen) < 2)):
            problem = "no_such_file"
        if problem:
            return await self._refuse(request, state, problem, target)
        source, name, length = self._source_for(state.transfer, chosen, file_id is None)
        try:
            return await self._serve(request, state, source, name, length, target)
        finally:
            await close_source(source)

    def _source_for(
        self, transfer: TransferRow, chosen: list[FileRow], as_zip: bool
    ) -> tuple[PieceSource, str, int | None]:
        if as_zip:
            created = transfer.created_at.astimezone(self._timezone)
            name = f"files-{created:%Y%m%d}.zip"
            return ZipSource(self._blobs, chosen, created), name, None
        (file,) = chosen
        return FileSource(self._blobs, file), download_name(file.display_name), file.size

    async def _serve(
        self, request: web.Request, state: LinkState, source: PieceSource, name: str,
        length: int | None, target: dict[str, str],
    ) -> web.StreamResponse:
        try:
            first = await next_piece(source)  # a damaged file is found before any byte leaves
        except STORAGE_ERRORS as error:
            log.warning("portal: cannot serve %s: %s", target["file_id"], error)
            reason = "integrity" if isinstance(error, BlobIntegrityError) else "unreadable"
            return await self._refuse(request, state, "storage", {**target, "error": reason})
        if not await asyncio.to_thread(self._claim, request, state, target):
            return await self._refuse(request, state, "limit_reached", target)
        self._emit("download", {})
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": content_disposition(name),
        })
        if length is not None:
            response.content_length = length
        try:
            await response.prepare(request)
            outcome = await stream_body(request, response, first or b"", source)
        except ConnectionError:
            outcome = "client_gone"
        if outcome != "complete":
            self._emit("download_aborted", {"reason": outcome})
            await self._audit("download.aborted", request, state, {**target, "reason": outcome})
        return response

    def _claim(self, request: web.Request, state: LinkState, target: dict[str, str]) -> bool:
        """Count the download and audit it in one commit (runs in a worker thread)."""
        assert state.link is not None
        with self._db.transaction():
            if not self._db.claim_download(state.link.id):
                return False
            self._db.append_event(
                "download", self._clock(), transfer_id=state.link.transfer_id,
                link_id=state.link.id, recipient=state.link.recipient,
                detail={**self._client(request), **target, "outcome": "served"},
            )
            return True

    # -- looking a token up ---------------------------------------------------------------

    async def _resolve(self, request: web.Request) -> LinkState:
        return await asyncio.to_thread(self._resolve_now, request.match_info["token"])

    def _resolve_now(self, token: str) -> LinkState:
        # Always hashed and queried, however the token looks: no shortcut to time.
        link = self._db.link_by_token_hash(hash_token(token))
        if link is None:
            return LinkState(None, None, (), None, "not_found")
        transfer = self._db.transfer(link.transfer_id)
        files = tuple(self._db.files_of(link.transfer_id)) if transfer else ()
        guard = self._db.password_guard(link.id) if transfer and transfer.password_hash else None
        return LinkState(link, transfer, files, guard, self._refusal(link, transfer, files))

    def _refusal(self, link: LinkRow, transfer: TransferRow | None,
                 files: tuple[FileRow, ...]) -> str | None:
        if transfer is None or link.state in ("pending", "failed"):
            return "not_active"
        if transfer.state in ("pending", "failed"):
            return "not_active"
        if link.state == "revoked":
            return "revoked"
        if transfer.state == "purged" or self._clock() >= transfer.expires_at:
            return "expired"
        if link.max_downloads and link.download_count >= link.max_downloads:
            return "limit_reached"
        return None if files else "not_active"

    # -- checks on a POST -----------------------------------------------------------------

    async def _form(self, request: web.Request) -> dict[str, str]:
        try:
            form = await request.post()
        except ValueError:
            return {}
        return {key: value for key, value in form.items() if isinstance(value, str)}

    def _post_problem(self, request: web.Request, link: LinkRow, form: Mapping[str, str]
                      ) -> str | None:
        allowed = {self._public_origin, f"{request.scheme}://{request.host}".lower()}
        headers = request.headers
        if cross_site(headers.get("Origin"), headers.get("Referer"), allowed - {None}):
            return "cross_site"
        return csrf_problem(self._secret, link.id, form.get("csrf", ""), self._clock())

    def _has_session(self, request: web.Request, state: LinkState) -> bool:
        assert state.link is not None and state.transfer is not None
        if state.transfer.password_hash is None:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return session_valid(self._secret, state.link.id, cookie, self._clock())

    # -- refusals, audit, metrics ---------------------------------------------------------

    async def _refuse(
        self, request: web.Request, state: LinkState, reason: str,
        target: Mapping[str, str] | None = None,
    ) -> web.Response:
        status = REFUSAL_STATUS[reason]
        kind = "download.failed" if status == 500 else "download.refused"
        self._emit("refusal", {"reason": reason})
        # Unknown tokens reach no link: audited rows for them would let anyone fill the table.
        if state.link is not None:
            detail = {**(target or {}), "reason": reason, "method": request.method}
            await self._audit(kind, request, state, detail)
        if status == 404:
            return self.error_page(request, 404)
        if status == 410:
            return self._gone_page(request, state, reason)
        if status == 429 and state.link is not None:
            guard = await asyncio.to_thread(self._db.password_guard, state.link.id)
            return self._locked_page(request, state, guard)
        message = "forbidden_password" if reason == "password_required" else "forbidden_csrf"
        return self.error_page(request, status, message=message)

    async def _audit(self, kind: str, request: web.Request, state: LinkState,
                     detail: Mapping[str, Any]) -> None:
        link = state.link
        assert link is not None
        await asyncio.to_thread(
            self._db.append_event, kind, self._clock(), transfer_id=link.transfer_id,
            link_id=link.id, recipient=link.recipient, detail={**self._client(request), **detail},
        )

    def _client(self, request: web.Request) -> dict[str, str]:
        forwarded = request.headers.getall("X-Forwarded-For", [])
        return {
            "client_ip": client_ip(request.remote, forwarded, self.settings.trusted_proxies),
            "user_agent": request.headers.get("User-Agent", "")[:_MAX_USER_AGENT_CHARS],
        }

    def _emit(self, kind: str, labels: dict[str, str]) -> None:
        if self._events_hook is None:
            return
        try:
            self._events_hook(kind, labels)
        except Exception:
            log.exception("portal: events hook failed for %s", kind)

    # -- pages ----------------------------------------------------------------------------

    def _locale(self, request: web.Request) -> str:
        return choose_locale(
            request.query, request.cookies, request.headers.get("Accept-Language", "")
        )

    def _local(self, moment: datetime, locale: str) -> str:
        return format_expiry(moment.astimezone(self._timezone), locale)

    def _page(self, request: web.Request, template: str, status: int, *,
              lang_base: str | None = None, **context: Any) -> web.Response:
        locale = self._locale(request)
        if lang_base is None:
            token = request.match_info.get("token")
            lang_base = f"/d/{quote(token, safe='')}" if token else ""
        html = self._templates.get_template(f"web/{template}").render(
            t=Translator(locale), lang=locale, lang_base=lang_base, **context,
        )
        response = web.Response(status=status, text=html, content_type="text/html")
        response.headers["Content-Language"] = locale
        chosen = request.query.get("lang")
        if chosen in LOCALES:
            self._set_cookie(response, request, "lang", chosen, max_age=LANG_COOKIE_AGE,
                             samesite="Lax", path="/")
        return response

    def _set_cookie(self, response: web.StreamResponse, request: web.Request, name: str,
                    value: str, *, max_age: int, samesite: str, path: str | None = None) -> None:
        token = request.match_info.get("token", "")
        response.set_cookie(
            name, value, max_age=max_age, path=path or f"/d/{token}", httponly=True,
            samesite=samesite, secure=self.https,
        )

    def _see_landing(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        return web.Response(status=303, headers={"Location": f"/d/{quote(token, safe='')}"})

    def error_page(self, request: web.Request, status: int, message: str | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
        if status == 404:
            # Relative switch links: the page is the same whatever token was asked for.
            response = self._page(request, "not_found.html", 404, lang_base="")
        else:
            titles = {403: "forbidden_title", 429: "locked_title", 500: "server_error_title"}
            bodies = {403: "forbidden_csrf", 500: "server_error_body"}
            response = self._page(
                request, "error.html", status, status_code=status,
                title_key=titles.get(status, "error_title"),
                body_key=message or bodies.get(status, "error_body"),
                back=_has_valid_token_shape(request),
            )
        response.headers.update(headers or {})
        return response

    def _gone_page(self, request: web.Request, state: LinkState, reason: str) -> web.Response:
        assert state.transfer is not None
        locale = self._locale(request)
        return self._page(
            request, "gone.html", 410, reason=reason, sender=state.transfer.sender,
            expired_at=self._local(state.transfer.expires_at, locale),
        )

    def _locked_page(self, request: web.Request, state: LinkState, guard: PasswordGuardRow
                     ) -> web.Response:
        now = self._clock()
        # No lock yet means parallel attempts hold the last tries: "wait" all the same.
        until = guard.locked_until or now
        response = self._landing_page(request, state, 429, locked_until=until)
        response.headers["Retry-After"] = str(max(int((until - now).total_seconds()), 1))
        return response

    def _landing_page(self, request: web.Request, state: LinkState, status: int, *,
                      alert: str | None = None, locked_until: datetime | None = None
                      ) -> web.Response:
        link, transfer = state.link, state.transfer
        assert link is not None and transfer is not None
        locale = self._locale(request)
        t = Translator(locale)
        now = self._clock()
        needs_password = not self._has_session(request, state)
        if locked_until is None and needs_password and state.guard and state.guard.locked_until:
            locked_until = state.guard.locked_until if state.guard.locked_until > now else None
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
        return self._page(
            request, "landing.html", status, transfer=transfer, recipient=link.recipient,
            files=files, expires=self._local(transfer.expires_at, locale),
            downloads_left=t("unlimited") if link.max_downloads == 0 else t("times", count=left),
            csrf=make_csrf_token(self._secret, link.id, now),
            needs_password=needs_password, alert=alert,
            locked_until=self._local(locked_until, locale) if locked_until else None,
            action_base=f"/d/{quote(request.match_info['token'], safe='')}",
        )


def _has_valid_token_shape(request: web.Request) -> bool:
    """Whether an error page may offer a way back to the landing page (only a shape check:
    the page says nothing about whether the link exists)."""
    return bool(_TOKEN_SHAPE.fullmatch(request.match_info.get("token", "")))
