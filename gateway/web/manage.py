"""The sender's management page: who got a link, whether and when they downloaded, and what
the sender may still change — revoke one link or all, extend the expiry within the policy's
maximum, open a PPAP ZIP with its password instead of mailing the password, unlock the
one-time codes of a link whose budget of codes was spent (otp.py).

GET /m/{token} only shows. POST /m/{token}/revoke, /extend, /unlock and /unlock-codes pass the link gate's
same-site check with a CSRF token bound to the transfer, then redirect (303) back to the
page. The management token is looked up by its hash through the gate, like download tokens
(guesses of either kind are throttled together), and never written to an event: events name
the transfer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from aiohttp import web

from gateway.presentation import display_name, human_size
from gateway.store.controls import (
    ControlsStore,
    DownloadHistory,
    ExtensionRefused,
    OtpState,
    TransferControls,
)
from gateway.store.db import Database, FileRow, LinkRow, TransferRow
from gateway.store.outbox import OutboxItem, OutboxStore
from gateway.store.passwords import hash_token
from gateway.store.throttles import ThrottleStore
from gateway.store.unlocks import UnlockRow, UnlockStore
from gateway.unlock.opening import OpenState, TransferOpener
from gateway.web.download import download_name
from gateway.web.i18n import Translator
from gateway.web.link_gate import LinkGate, management_csrf_subject
from gateway.web.pages import Pages, token_base
from gateway.web.ratelimit import SlidingWindow

# The extensions offered; None: as far as the policy allows. Each is capped at that maximum.
EXTEND_CHOICES: dict[str, timedelta | None] = {
    "1": timedelta(days=1), "3": timedelta(days=3), "7": timedelta(days=7), "max": None,
}
# What a revoked link must no longer send to its recipient.
RECIPIENT_NOTICES = ("password-recipient", "webhook-password", "otp")
PASSWORD_NOTICES = ("password-recipient", "webhook-password")
_DONE = ("revoked", "extended", "unchanged", "unlocked", "blocked", "codes_unlocked")
# ZIP passwords tried through the form, per transfer (on every node together): the page's
# token is already a secret, this only keeps a leaked one from becoming a password oracle.
UNLOCK_ATTEMPTS, UNLOCK_WINDOW = 10, timedelta(minutes=15)
UNLOCK_SCOPE = "manage-unlock"


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
    codes: Mapping[str, OtpState] = field(default_factory=dict)  # by link id


def extended_expiry(current: datetime, maximum: datetime, choice: str) -> datetime:
    step = EXTEND_CHOICES[choice]
    return min(maximum if step is None else current + step, maximum)


class ManagePages:
    """GET /m/{token} and POST /m/{token}/revoke, /extend, /unlock, /unlock-codes."""

    def __init__(self, *, gate: LinkGate, db: Database, pages: Pages, controls: ControlsStore,
                 unlocks: UnlockStore, outbox: OutboxStore, clock: Callable[[], datetime],
                 throttles: ThrottleStore, opener: TransferOpener | None = None):
        self._gate = gate
        self._opener = opener
        self._unlocks = unlocks
        self._attempts = SlidingWindow(throttles, UNLOCK_SCOPE, UNLOCK_ATTEMPTS, UNLOCK_WINDOW)
        self._db = db
        self._pages = pages
        self._controls = controls
        self._outbox = outbox
        self._clock = clock

    # -- routes ---------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        managed = await self._gate.find_management(request, self._find_everything)
        if isinstance(managed, web.Response):
            return managed
        done = request.query.get("done")
        return self._page(request, managed, 200, done=done if done in _DONE else None)

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        checked = await self._gate.checked_management_post(request, self._find_transfer)
        if isinstance(checked, web.Response):
            return checked
        managed, form = checked
        choice = form.get("link", "")
        changed = await asyncio.to_thread(
            self._revoke, managed.transfer.id, None if choice == "all" else choice,
            self._gate.client(request),
        )
        return self._back(request, "revoked" if changed else "unchanged")

    async def extend(self, request: web.Request) -> web.StreamResponse:
        checked = await self._gate.checked_management_post(request, self._find_transfer)
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
                self._gate.client(request),
            )
        except ExtensionRefused:
            return await self._page_again(request, 409)
        return self._back(request, "extended")

    async def unlock_codes(self, request: web.Request) -> web.StreamResponse:
        """A link locked for one-time codes gets a fresh budget (audited in the same commit)."""
        checked = await self._gate.checked_management_post(request, self._find_transfer)
        if isinstance(checked, web.Response):
            return checked
        managed, form = checked
        unlocked = await asyncio.to_thread(
            self._controls.unlock_otp, managed.transfer.id, form.get("link", ""), self._clock(),
            "sender", self._gate.client(request),
        )
        return self._back(request, "codes_unlocked" if unlocked else "unchanged")

    async def unlock(self, request: web.Request) -> web.StreamResponse:
        if self._opener is None:
            return self._pages.error_page(request, 404)
        checked = await self._gate.checked_management_post(request, self._find_transfer)
        if isinstance(checked, web.Response):
            return checked
        managed, form = checked
        password = form.get("password", "")
        if not password or len(password) > 256:
            return await self._page_again(request, 400, alert="unlock_wrong")
        wait = await asyncio.to_thread(
            self._attempts.reserve, managed.transfer.id, self._clock())
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
        if outcome.state is OpenState.BUSY:  # the in-flight budget is full: nothing was done
            return await self._page_again(request, 503, alert="unlock_busy")
        if outcome.state is OpenState.REFUSED:
            return await self._page_again(request, 422, alert="unlock_refused",
                                          reason=outcome.detail)
        done = {OpenState.UNLOCKED: "unlocked", OpenState.BLOCKED: "blocked"}
        return self._back(request, done.get(outcome.state, "unchanged"))

    async def _page_again(self, request: web.Request, status: int,
                          alert: str = "extend_refused", **values: Any) -> web.Response:
        """The page as it is now, saying why the last form was refused."""
        managed = await asyncio.to_thread(self._find_everything, request.match_info["token"])
        if managed is None:
            return self._pages.error_page(request, 404)
        return self._page(request, managed, status, alert=(alert, values))

    # -- the store ------------------------------------------------------------------------

    def _find_transfer(self, token: str) -> Managed | None:
        """The transfer behind a management token, if it may be managed (what a POST needs)."""
        # Always hashed and queried, however the token looks: no shortcut to time.
        controls = self._controls.by_manage_token_hash(hash_token(token))
        transfer = self._db.transfer(controls.transfer_id) if controls else None
        if controls is None or transfer is None or transfer.state in ("pending", "failed"):
            return None
        return Managed(controls, transfer)

    def _find_everything(self, token: str) -> Managed | None:
        """The transfer behind a management token and all the page shows of it."""
        found = self._find_transfer(token)
        if found is None:
            return None
        controls, transfer = found.controls, found.transfer
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
            self._controls.otp_states(transfer.id),
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
            csrf=self._gate.csrf_token(management_csrf_subject(transfer.id), now),
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
        codes = managed.codes.get(link.id)
        codes_locked = None
        if codes is not None and codes.locked_at is not None:
            codes_locked = t("codes_locked", at=local(codes.locked_at, locale),
                             reason=t(f"codes_locked_{codes.locked_reason or 'sends'}"))
        return {
            "id": link.id, "address": link.recipient, "state": link.state,
            "state_label": t(f"state_{link.state}"),
            "delivered": local(link.activated_at, locale) if link.activated_at
            else t("not_delivered"),
            "downloads": downloads,
            "notice": _notice_text(notices[-1], t, local, locale) if notices else None,
            "revocable": link.state == "active" and not ended,
            "codes_locked": codes_locked,
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
