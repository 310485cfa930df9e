"""One-time codes that prove a visitor holds the mailbox a link was issued for.

POST /d/{token}/otp mails a fresh 6-digit code to the link's recipient: the code's MAC, the
outbox item carrying the sealed code and the audit event go in one commit. Sends are limited
per link (one per resend interval) and per client network, both kept in the store (every node
counts together).
POST /d/{token}/otp/verify checks a typed code: a few tries per code, then it is void; the
right one earns a signed cookie for that link alone.

Per-network limits do not stop guesses spread over many networks, so each link also has a
budget kept in the store: codes sent and wrong codes typed. When it is spent the link is
locked for codes, and the lock, its audit event and the sender's notice ("otp-locked") go in
one commit; the sender unlocks it on the management page (manage.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import secrets
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Callable

from aiohttp import web

from gateway.addresses import is_null_sender
from gateway.config import PortalSettings
from gateway.store.controls import (
    CodeBudgetSpent,
    CodesLocked,
    ControlsStore,
    ResendTooSoon,
)
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore, new_outbox_id
from gateway.store.throttles import ThrottleStore
from gateway.web.i18n import Translator
from gateway.web.landing import LandingPage
from gateway.web.link_gate import LinkGate, LinkState
from gateway.web.pages import Pages
from gateway.web.ratelimit import SlidingWindow, client_key
from gateway.web.security import otp_mac

log = logging.getLogger("gateway.web")

CODE_DIGITS = 6
_CODE_SHAPE = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")
# What people type between groups of digits, or paste along with them.
_SEPARATORS = re.compile(r"[\s\-]+")
_MAX_TYPED_CHARS = 64
PER_CLIENT_SCOPE = "otp-client"


def new_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def normalize_code(typed: str) -> str | None:
    """The six ASCII digits a visitor meant (full-width digits and spaces allowed), or None."""
    if len(typed) > _MAX_TYPED_CHARS:
        return None
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", typed))
    return text if _CODE_SHAPE.fullmatch(text) else None


class OtpRoutes:
    """POST /d/{token}/otp (mail a code) and /d/{token}/otp/verify (check a typed one)."""

    def __init__(
        self, *, gate: LinkGate, landing: LandingPage, pages: Pages, db: Database,
        controls: ControlsStore, outbox: OutboxStore, settings: PortalSettings, secret: bytes,
        clock: Callable[[], datetime], seal: Callable[[str, bytes], bytes] | None,
        wake_outbox: Callable[[], None], throttles: ThrottleStore,
        retired_secrets: tuple[bytes, ...] = (),
    ):
        self._gate = gate
        self._landing = landing
        self._pages = pages
        self._db = db
        self._controls = controls
        self._outbox = outbox
        self._settings = settings
        self._secret = secret
        self._retired_secrets = retired_secrets
        self._clock = clock
        self._seal = seal
        self._wake_outbox = wake_outbox
        self._per_client = SlidingWindow(throttles, PER_CLIENT_SCOPE,
                                         settings.otp_per_client_per_hour, timedelta(hours=1))

    # -- routes ---------------------------------------------------------------------------

    async def send(self, request: web.Request) -> web.StreamResponse:
        gate = self._gate
        checked = await gate.checked_post(request, _asks_for_a_code)
        if isinstance(checked, web.StreamResponse):
            return checked
        state, _ = checked
        if self._seal is None:
            log.error("portal: no sealer was given, so no one-time code can be sent")
            return self._pages.error_page(request, 503, message="otp_unavailable")
        if state.otp is not None and state.otp.locked_at is not None:
            return await self._codes_locked(request, state)
        now = self._clock()
        client = gate.client(request)
        try:
            sent = await asyncio.to_thread(self._counted_issue, state, client, now)
        except ResendTooSoon as refused:
            return await self._throttled(request, state, "link", refused.retry_at - now)
        except CodesLocked:
            return await self._codes_locked(request, state)
        if isinstance(sent, timedelta):
            return await self._throttled(request, state, "client", sent)
        if not sent:  # this request found the budget spent and locked the link
            self._wake_outbox()
            return await self._codes_locked(request, state, just_now=True)
        self._wake_outbox()
        return gate.see_landing(request)

    async def verify(self, request: web.Request) -> web.StreamResponse:
        gate = self._gate
        checked = await gate.checked_post(request, _asks_for_a_code)
        if isinstance(checked, web.StreamResponse):
            return checked
        state, form = checked
        assert state.link is not None
        now = self._clock()
        link_id = state.link.id
        typed = normalize_code(form.get("code", ""))
        # Anything that is not six digits cannot match, and costs a try all the same.
        typed_hash = self._typed_hash(state, typed) if typed else ""
        outcome = await asyncio.to_thread(
            self._settle, state, typed_hash, gate.client(request), now
        )
        if outcome == "budget_spent":
            self._wake_outbox()
            await gate.audit("otp.failed", request, state, {})
            return await self._codes_locked(request, state, just_now=True)
        if outcome == "link_locked":
            return await self._codes_locked(request, state)
        if outcome == "verified":
            await gate.audit("otp.verified", request, state, {})
            response = gate.see_landing(request)
            gate.grant_verified(response, request, link_id, now)
            return response
        return await self._not_verified(request, state, outcome)

    def _typed_hash(self, state: LinkState, typed: str) -> str:
        """The typed code's MAC under the secret the stored code was made with: the current
        one, or a retired one for a code mailed before a master-key rotation's restart."""
        assert state.link is not None
        current = otp_mac(self._secret, state.link.id, typed)
        stored = state.otp.code_hash if state.otp is not None else ""
        if stored and not hmac.compare_digest(current, stored):
            for secret in self._retired_secrets:
                retired = otp_mac(secret, state.link.id, typed)
                if hmac.compare_digest(retired, stored):
                    return retired
        return current

    # -- sending --------------------------------------------------------------------------

    def _counted_issue(self, state: LinkState, client: dict[str, str],
                       now: datetime) -> bool | timedelta:
        """_issue, counted first against the client network's hourly limit: how long it must
        wait instead when it is at that limit. A request that sends no code is not counted."""
        key = client_key(client["client_ip"])
        wait = self._per_client.reserve(key, now)
        if wait is not None:
            return wait
        try:
            sent = self._issue(state, client, now)
        except BaseException:
            self._per_client.release(key)
            raise
        if not sent:
            self._per_client.release(key)
        return sent

    def _issue(self, state: LinkState, client: dict[str, str], now: datetime) -> bool:
        """Store the new code's MAC, queue the mail with the sealed code, audit: one commit.
        False when the link's budget of codes was spent: it is locked instead (same commit)."""
        assert state.link is not None and self._seal is not None
        link, settings = state.link, self._settings
        code = new_code()
        expires_at = now + settings.otp_lifetime
        item_id = new_outbox_id()
        sealed = self._seal(item_id, json.dumps({"code": code}).encode())
        with self._db.transaction():
            try:
                sends = self._controls.issue_otp(
                    link.id, otp_mac(self._secret, link.id, code), now, expires_at,
                    settings.otp_resend_interval, settings.otp_max_sends_per_link,
                )
            except CodeBudgetSpent:
                self._lock(state, "sends", client, now)
                return False
            # A code not yet mailed is stale now: only the newest may go out.
            self._outbox.cancel(link_id=link.id, kinds=("otp",))
            self._outbox.enqueue(
                kind="otp", now=now, due_at=now, item_id=item_id, sealed=sealed,
                payload={"minutes": _minutes(settings.otp_lifetime)},
                transfer_id=link.transfer_id, link_id=link.id,
            )
            self._db.append_event(
                "otp.sent", now, transfer_id=link.transfer_id, link_id=link.id,
                recipient=link.recipient,
                detail={**client, "expires_at": expires_at.isoformat(), "sends": sends},
            )
        return True

    # -- the link's budget ----------------------------------------------------------------

    def _settle(self, state: LinkState, typed_hash: str, client: dict[str, str],
                now: datetime) -> str:
        """Check the typed code; when that try spent the link's budget, lock it in the same
        commit (settle_otp's outcomes)."""
        assert state.link is not None
        settings = self._settings
        with self._db.transaction():
            outcome = self._controls.settle_otp(
                state.link.id, typed_hash, now, settings.otp_max_attempts,
                settings.otp_max_failures_per_link,
            )
            if outcome == "budget_spent":
                self._tell_sender(state, "failures", client, now)
            return outcome

    def _lock(self, state: LinkState, reason: str, client: dict[str, str],
              now: datetime) -> None:
        """Inside the caller's commit: lock the link for codes and tell the sender, once."""
        assert state.link is not None
        if self._controls.lock_otp(state.link.id, now, reason):
            self._tell_sender(state, reason, client, now)

    def _tell_sender(self, state: LinkState, reason: str, client: dict[str, str],
                     now: datetime) -> None:
        """Inside the commit that locked the link: the audit event and the sender's notice
        (none for the null sender: nothing is ever sent to <>)."""
        link, transfer = state.link, state.transfer
        assert link is not None and transfer is not None
        settings = self._settings
        self._db.append_event(
            "otp.link_locked", now, transfer_id=link.transfer_id, link_id=link.id,
            recipient=link.recipient,
            detail={**client, "reason": reason, "max_sends": settings.otp_max_sends_per_link,
                    "max_failures": settings.otp_max_failures_per_link},
        )
        if is_null_sender(transfer.sender):
            return
        self._outbox.enqueue(
            kind="otp-locked", now=now, due_at=now, transfer_id=link.transfer_id,
            link_id=link.id,
            payload={"recipient": link.recipient, "reason": reason, "at": now.isoformat()},
        )

    async def _codes_locked(self, request: web.Request, state: LinkState,
                            just_now: bool = False) -> web.Response:
        """The landing page of a link locked for codes: it says the sender has been told.
        A request that `just_now` locked it was audited as the lock (otp.link_locked)."""
        gate = self._gate
        assert state.link is not None
        gate.emit("refusal", {"reason": "otp_link_locked"})
        if not just_now:
            await gate.audit("otp.refused", request, state, {"reason": "link_locked"})
        otp = await asyncio.to_thread(self._controls.otp_state, state.link.id)
        return self._landing.render(request, replace(state, otp=otp), 403)

    async def _throttled(self, request: web.Request, state: LinkState, scope: str,
                         wait: timedelta) -> web.Response:
        gate = self._gate
        seconds = max(math.ceil(wait.total_seconds()), 1)
        gate.emit("refusal", {"reason": "otp_throttled"})
        await gate.audit("otp.throttled", request, state,
                         {"scope": scope, "retry_after": seconds})
        locale = self._pages.locale(request)
        t = Translator(locale)
        if scope == "link":
            alert = t("otp_wait", seconds=seconds)
        else:
            until = self._pages.local(self._clock() + timedelta(seconds=seconds), locale)
            alert = t("otp_client_limit", until=until)
        response = self._landing.render(request, state, 429, alert=alert)
        response.headers["Retry-After"] = str(seconds)
        return response

    # -- checking -------------------------------------------------------------------------

    async def _not_verified(self, request: web.Request, state: LinkState,
                            outcome: str) -> web.Response:
        gate = self._gate
        assert state.link is not None
        otp = await asyncio.to_thread(self._controls.otp_state, state.link.id)
        state = replace(state, otp=otp)
        max_attempts = self._settings.otp_max_attempts
        t = Translator(self._pages.locale(request))
        if outcome in ("wrong", "locked"):
            await gate.audit("otp.failed", request, state, {})
        if outcome == "wrong":
            left = max(max_attempts - (otp.failures if otp else 0), 0)
            alert = t("otp_wrong", left=left)
        elif outcome == "locked":
            gate.emit("otp_locked", {})
            await gate.audit("otp.locked", request, state, {"attempts": max_attempts})
            alert = t("otp_locked")
        else:
            await gate.audit("otp.refused", request, state, {"reason": outcome})
            locked = otp is not None and otp.code_hash and otp.failures >= max_attempts
            alert = t("otp_expired" if outcome == "expired"
                      else "otp_locked" if locked else "otp_none")
        return self._landing.render(request, state, 403, alert=alert)


def _minutes(lifetime: timedelta) -> int:
    return max(1, int(lifetime.total_seconds() // 60))


def _asks_for_a_code(state: LinkState) -> bool:
    return state.verify_recipient
