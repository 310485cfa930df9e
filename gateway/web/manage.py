"""The sender's management page: who got a link, whether and when they downloaded, and what
the sender may still change — revoke one link or all, extend the expiry within the policy's
maximum, open a PPAP ZIP with its password instead of mailing the password.

GET /m/{token} only shows. POST /m/{token}/revoke, /extend and /unlock pass the same-site
check with a CSRF token bound to the transfer, then redirect (303) back to the page. The
management token is looked up by its hash, like download tokens, and never written to an
event: events name the transfer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from aiohttp import web

from gateway.config import PortalSettings
from gateway.pipeline.notice import display_name, human_size
from gateway.store.controls import (
    ControlsStore,
    DownloadHistory,
    ExtensionRefused,
    TransferControls,
)
from gateway.store.db import Database, FileRow, LinkRow, TransferRow
from gateway.store.outbox import OutboxItem, OutboxStore
from gateway.store.passwords import hash_token
from gateway.store.unlocks import UnlockRow, UnlockStore
from gateway.unlock.opening import OpenState, TransferOpener
from gateway.web.download import download_name
from gateway.web.i18n import Translator
from gateway.web.pages import Pages, client_details, post_problem, read_form, token_base
from gateway.web.ratelimit import GuessThrottle, SlidingWindow
from gateway.web.security import make_csrf_token

# The extensions offered; None: as far as the policy allows. Each is capped at that maximum.
EXTEND_CHOICES: dict[str, timedelta | None] = {
    "1": timedelta(days=1), "3": timedelta(days=3), "7": timedelta(days=7), "max": None,
}
# What a revoked link must no longer send to its recipient.
RECIPIENT_NOTICES = ("password-recipient", "webhook-password", "otp")
PASSWORD_NOTICES = ("password-recipient", "webhook-password")
_DONE = ("revoked", "extended", "unchanged", "unlocked", "blocked")
# ZIP passwords tried through the form, per transfer: the page's token is already a secret,
# this only keeps a leaked one from becoming a password oracle.
UNLOCK_ATTEMPTS, UNLOCK_WINDOW = 10, timedelta(minutes=15)


@dataclass(frozen=True)
class Managed:
    """A transfer as its sender sees it."""

    controls: TransferControls
    transfer: TransferRow
    files: tuple[FileRow, ...] = ()
    links: tuple[LinkRow, ...] = ()
    downloads: Mapping[str, DownloadHistory] = field(default_factory=dict)
    notices: tuple[OutboxItem, ...] = ()
    unlock: UnlockRow | None = None
    lockable: bool = False  # holds an encrypted ZIP that no password has opened yet


def csrf_subject(transfer_id: str) -> str:
    """What a management form's CSRF token is bound to (never a link id: links have ':'-free
    ids, so no download token can pass for a management one)."""
    return f"manage:{transfer_id}"


def extended_expiry(current: datetime, maximum: datetime, choice: str) -> datetime:
    step = EXTEND_CHOICES[choice]
    return min(maximum if step is None else current + step, maximum)


class ManagePages:
    def __init__(self, settings: PortalSettings, db: Database, pages: Pages,
                 controls: ControlsStore, outbox: OutboxStore, secret: bytes,
                 clock: Callable[[], datetime], opener: TransferOpener | None = None,
                 guesses: GuessThrottle | None = None):
        self._opener = opener
        self._guesses = guesses
        self._unlocks = UnlockStore(db)
        self._attempts = SlidingWindow(UNLOCK_ATTEMPTS, UNLOCK_WINDOW)
        self._settings = settings
        self._db = db
        self._pages = pages
        self._controls = controls
        self._outbox = outbox
        self._secret = secret
        self._clock = clock

    # -- routes ---------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        managed = await self._lookup(request, True)
        if isinstance(managed, web.Response):
            return managed
        done = request.query.get("done")
        return self._page(request, managed, 200, done=done if done in _DONE else None)

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked_post(request)
        if isinstance(checked, web.Response):
            return checked
        managed, form = checked
        choice = form.get("link", "")
        changed = await asyncio.to_thread(
            self._revoke, managed.transfer.id, None if choice == "all" else choice,
            client_details(request, self._settings),
        )
        return self._back(request, "revoked" if changed else "unchanged")

    async def extend(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked_post(request)
        if isinstance(checked, web.Response):
            return checked
        managed, form = checked
        choice = form.get("days", "")
        if choice not in EXTEND_CHOICES:
            return await self._page_again(request, 400)
        transfer, controls = managed.transfer, managed.controls
        new_expiry = extended_expiry(transfer.expires_at, controls.max_expires_at, choice)
        try:
            await asyncio.to_thread(
                self._controls.extend, transfer.id, new_expiry, self._clock(), "sender",
                client_details(request, self._settings),
            )
        except ExtensionRefused:
            return await self._page_again(request, 409)
        return self._back(request, "extended")

    async def unlock(self, request: web.Request) -> web.StreamResponse:
        if self._opener is None:
            return self._pages.error_page(request, 404)
        checked = await self._checked_post(request)
        if isinstance(checked, web.Response):
            return checked
        managed, form = checked
        password = form.get("password", "")
        if not password or len(password) > 256:
            return await self._page_again(request, 400, alert="unlock_wrong")
        wait = self._attempts.reserve(managed.transfer.id, self._clock())
        if wait is not None:
            minutes = max(1, int(wait.total_seconds() // 60) + 1)
            response = await self._page_again(request, 429, alert="unlock_limited",
                                              minutes=minutes)
            response.headers["Retry-After"] = str(int(wait.total_seconds()) + 1)
            return response
        outcome = await self._opener.open_with_password(managed.transfer, password, self._clock())
        if outcome.state is OpenState.WRONG_PASSWORD:
            return await self._page_again(request, 400, alert="unlock_wrong")
        if outcome.state is OpenState.TEMPFAIL:
            return await self._page_again(request, 503, alert="unlock_scan_unavailable")
        if outcome.state is OpenState.REFUSED:
            return await self._page_again(request, 422, alert="unlock_refused",
                                          reason=outcome.detail)
        done = {OpenState.UNLOCKED: "unlocked", OpenState.BLOCKED: "blocked"}
        return self._back(request, done.get(outcome.state, "unchanged"))

    async def _page_again(self, request: web.Request, status: int,
                          alert: str = "extend_refused", **values: Any) -> web.Response:
        """The page as it is now, saying why the last form was refused."""
        managed = await asyncio.to_thread(self._resolve, request.match_info["token"], True)
        if managed is None:
            return self._pages.error_page(request, 404)
        return self._page(request, managed, status, alert=(alert, values))

    # -- the store ------------------------------------------------------------------------

    async def _lookup(self, request: web.Request, everything: bool) -> Managed | web.Response:
        """The transfer behind the page's token, or the refusal: the common 404, or 429 for a
        client that has guessed too many tokens (counted with the download links' guesses)."""
        address = client_details(request, self._settings)["client_ip"]
        if self._guesses is not None:
            wait = self._guesses.wait(address, self._clock())
            if wait is not None:
                return self._pages.guessing_page(request, wait)
        managed = await asyncio.to_thread(self._resolve, request.match_info["token"], everything)
        if managed is None:
            if self._guesses is not None:
                self._guesses.missed(address, self._clock())
            return self._pages.error_page(request, 404)
        return managed

    def _resolve(self, token: str, everything: bool) -> Managed | None:
        # Always hashed and queried, however the token looks: no shortcut to time.
        controls = self._controls.by_manage_token_hash(hash_token(token))
        transfer = self._db.transfer(controls.transfer_id) if controls else None
        if controls is None or transfer is None or transfer.state in ("pending", "failed"):
            return None
        if not everything:
            return Managed(controls, transfer)
        served, _ = self._unlocks.served(transfer.id)
        unlock = self._unlocks.of(transfer.id)
        # By name only: reading every blob on each page view would cost too much; the form's
        # POST looks inside and answers "nothing changed" for a ZIP that is not encrypted.
        lockable = self._opener is not None and unlock is None and any(
            f.display_name.lower().endswith(".zip") for f in served
        )
        return Managed(
            controls, transfer, tuple(served),
            tuple(self._db.links_of(transfer.id)), self._controls.download_history(transfer.id),
            tuple(self._outbox.items(transfer.id)), unlock, lockable,
        )

    def _revoke(self, transfer_id: str, link_id: str | None, client: dict[str, str]) -> int:
        """Revoke and cancel what the revoked links would still send, in one commit."""
        with self._db.transaction():
            active = [l.id for l in self._db.links_of(transfer_id) if l.state == "active"]
            if not active or (link_id is not None and link_id not in active):
                return 0  # nothing to do: no event either
            changed = self._controls.revoke_links(transfer_id, link_id, self._clock(),
                                                  by="sender", detail=client)
            if link_id is None:
                self._outbox.cancel(transfer_id=transfer_id,
                                    kinds=(*RECIPIENT_NOTICES, "password-sender"))
            else:
                self._outbox.cancel(link_id=link_id, kinds=RECIPIENT_NOTICES)
            return changed

    # -- checks ---------------------------------------------------------------------------

    async def _checked_post(self, request: web.Request
                            ) -> tuple[Managed, dict[str, str]] | web.Response:
        """The transfer and the form of a POST that passed the same-site and CSRF checks, or
        the page that refuses it."""
        managed = await self._lookup(request, False)
        if isinstance(managed, web.Response):
            return managed
        form = await read_form(request)
        problem = self._post_problem(request, managed, form)
        if problem:
            return await self._refuse(request, managed, problem)
        return managed, form

    def _post_problem(self, request: web.Request, managed: Managed,
                      form: Mapping[str, str]) -> str | None:
        return post_problem(request, settings=self._settings, secret=self._secret,
                            subject=csrf_subject(managed.transfer.id), form=form,
                            now=self._clock())

    async def _refuse(self, request: web.Request, managed: Managed, reason: str
                      ) -> web.Response:
        await asyncio.to_thread(
            self._db.append_event, "manage.refused", self._clock(),
            transfer_id=managed.transfer.id,
            detail={**client_details(request, self._settings), "reason": reason,
                    "method": request.method},
        )
        return self._pages.error_page(request, 403, message="forbidden_manage")

    # -- the page -------------------------------------------------------------------------

    def _back(self, request: web.Request, done: str) -> web.Response:
        return web.Response(status=303, headers={"Location": f"{token_base(request)}?done={done}"})

    def _page(self, request: web.Request, managed: Managed, status: int, *,
              done: str | None = None, alert: tuple[str, dict] | None = None) -> web.Response:
        transfer, controls = managed.transfer, managed.controls
        locale = self._pages.locale(request)
        t = Translator(locale)
        now = self._clock()
        ended = transfer.state != "active" or now >= transfer.expires_at
        maximum = self._pages.local(controls.max_expires_at, locale)
        if alert is not None:
            key, values = alert
            values = {"until": maximum, **values} if key == "extend_refused" else values
        return self._pages.render(
            request, "manage.html", status, transfer=transfer,
            sent_at=self._pages.local(transfer.created_at, locale),
            expires=self._pages.local(transfer.expires_at, locale), max_expiry=maximum,
            ended=ended, files=[_file(f, t, locale) for f in managed.files],
            recipients=[self._recipient(link, managed, t, locale, ended)
                        for link in managed.links],
            any_active=any(link.state == "active" for link in managed.links),
            extend_options=[] if ended else self._extend_options(managed, t, locale),
            done=done, alert=t(alert[0], **alert[1]) if alert else None,
            unlock_state=self._unlock_state(managed, t, locale),
            unlockable=managed.lockable and not ended,
            csrf=make_csrf_token(self._secret, csrf_subject(transfer.id), now),
            action_base=token_base(request),
        )

    def _unlock_state(self, managed: Managed, t: Translator, locale: str) -> str | None:
        unlock = managed.unlock
        if unlock is None or unlock.state not in ("unlocked", "blocked", "refused"):
            return None
        return t(f"unlock_state_{unlock.state}", at=self._pages.local(unlock.at, locale),
                 reason=unlock.reason)

    def _recipient(self, link: LinkRow, managed: Managed, t: Translator, locale: str,
                   ended: bool) -> dict[str, Any]:
        local = self._pages.local
        history = managed.downloads.get(link.id)
        if history is None:
            downloads = t("downloads_none")
        elif history.count == 1:
            downloads = t("downloads_once", at=local(history.first_at, locale))
        else:
            downloads = t("downloads_many", count=history.count,
                          first=local(history.first_at, locale),
                          last=local(history.last_at, locale))
        notices = [n for n in managed.notices
                   if n.link_id == link.id and n.kind in PASSWORD_NOTICES]
        return {
            "id": link.id, "address": link.recipient, "state": link.state,
            "state_label": t(f"state_{link.state}"),
            "delivered": local(link.activated_at, locale) if link.activated_at
            else t("not_delivered"),
            "downloads": downloads,
            "notice": _notice_text(notices[-1], t, local, locale) if notices else None,
            "revocable": link.state == "active" and not ended,
        }

    def _extend_options(self, managed: Managed, t: Translator, locale: str
                        ) -> list[dict[str, str]]:
        current = managed.transfer.expires_at
        options, seen = [], set()
        for choice in EXTEND_CHOICES:
            until = extended_expiry(current, managed.controls.max_expires_at, choice)
            if until <= current or until in seen:
                continue
            seen.add(until)
            shown = self._pages.local(until, locale)
            if choice == "max":
                label = t("extend_max", until=shown)
            else:
                label = t("extend_day_one" if choice == "1" else "extend_days",
                          days=choice, until=shown)
            options.append({"value": choice, "label": label})
        return options


def _file(file: FileRow, t: Translator, locale: str) -> dict[str, str]:
    return {
        "name": display_name(file.display_name) or download_name(""),
        "size": t("size_value", human=human_size(file.size, locale), bytes=f"{file.size:,}"),
        "sha256": file.sha256,
    }


def _notice_text(item: OutboxItem, t: Translator,
                 local: Callable[[datetime, str], str], locale: str) -> str:
    if item.state == "sent" and item.sent_at is not None:
        return t("notice_sent", at=local(item.sent_at, locale))
    if item.state == "pending":
        return t("notice_pending", at=local(item.due_at, locale))
    return t("notice_gave_up" if item.state == "gave_up" else "notice_cancelled")
