"""Send what the durable outbox holds once it is due, retry with back-off, give up when too old.

One item at a time, in due order, each under a claim (OutboxStore.claim_due): every node of a
cluster runs one worker, and an item is sent by the one that claimed it. Compose it
(ComposeError: nothing left to send), hand it to the next hop or the webhook sender, then record
the answer. Accepted → mark_sent, the commit that records the acceptance and wipes the item's
secrets. Temporary → retry after retry_initial · 2^attempts, at most retry_max. Permanent,
uncomposable or older than max_age → gave_up, audited, and a "give-up-note" for the sender.

Delivery is at least once: a crash after the next hop accepted but before mark_sent committed
sends the item again, by this node once it restarts (it takes back its own claims at once) or
by another once the claim's lease (notify.claim_lease) has run out. A worker so slow that its
lease ran out while it was sending, and another node claimed the item meanwhile, also makes a
second send: its record is refused, the other's counts. The composer makes the same bytes with
the same Message-ID (and the same webhook body) each time, so the receiver can drop the
duplicate. Nothing that mark_sent recorded is ever sent again. The window is kept small:
nothing but the commit runs between the acceptance and mark_sent (the next hop retires a
connection after it has answered, not before), and an acceptance whose commit failed (a locked
database) is kept and committed before anything else is sent, never sent again while the
process lives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from gateway.config import NotifySettings
from gateway.crashpoints import crash_point
from gateway.model import DeliveryResult, OutgoingMessage
from gateway.notify import ComposeError
from gateway.notify.webhook import WebhookCall, WebhookSender
from gateway.outbound.hop import NextHop
from gateway.store.db import MetadataError
from gateway.store.outbox import OutboxItem, OutboxStore

log = logging.getLogger("gateway.notify")

GIVE_UP_NOTE = "give-up-note"
# However the settings read, a failed item never comes back sooner than this (no busy loop).
_MIN_BACKOFF = timedelta(seconds=1)
_SHORT_ERROR = 200


class Composer(Protocol):
    def compose(self, item: OutboxItem) -> OutgoingMessage | WebhookCall: ...


def backoff(settings: NotifySettings, attempts: int) -> timedelta:
    """How long to wait after the (attempts + 1)-th failure: initial · 2^attempts, capped."""
    delay = max(settings.retry_initial, _MIN_BACKOFF)
    cap = max(settings.retry_max, delay)
    for _ in range(max(attempts, 0)):
        if delay >= cap / 2:
            return cap
        delay *= 2
    return min(delay, cap)


class OutboxWorker:
    def __init__(
        self,
        outbox: OutboxStore,
        composer: Composer,
        next_hop: NextHop,
        webhooks: WebhookSender | None,
        settings: NotifySettings,
        clock: Callable[[], datetime],
        wake: asyncio.Event | None = None,
        after_send: Callable[[OutboxItem], None] | None = None,
        node: str = "local",
    ) -> None:
        """`wake`: set by whoever enqueues an item due now. `after_send`: a test hook called
        between the next hop's acceptance and mark_sent; what it raises leaves run_once, as
        if the process had died there. `node`: the claimer, this node's id (gateway.node_id);
        its claims hold for `settings.claim_lease`."""
        self._outbox = outbox
        self._composer = composer
        self._next_hop = next_hop
        self._webhooks = webhooks
        self._settings = settings
        self._clock = clock
        self._wake = wake
        self._after_send = after_send
        self._node = node
        self._stop: asyncio.Event | None = None
        self._database_trouble = False
        # Accepted by the next hop, mark_sent not yet committed (it failed): by item id.
        self._unrecorded: dict[str, tuple[OutboxItem, datetime, DeliveryResult]] = {}

    # -- one round -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Handle the items due now, claiming one at a time; return how many got an outcome
        recorded."""
        self._database_trouble = False
        try:
            handled = await self._record_unrecorded()
            # A read first, so a round with nothing due commits nothing; it also bounds the
            # round to what was due when it began.
            due = len(await asyncio.to_thread(self._outbox.due, self._clock()))
        except MetadataError as error:
            return self._stop_round(error)
        for _ in range(due):
            if self._stop is not None and self._stop.is_set():
                break
            try:
                # The claim's commit is synced at once (PostgreSQL: every commit), and so is
                # the item's own, a relay's deferred one: it is on disk before it leaves.
                claimed = await asyncio.to_thread(
                    self._outbox.claim_due, self._node, self._clock(),
                    self._settings.claim_lease)
                if not claimed:
                    log.info("outbox: nothing more to claim: the items due were already sent"
                             " or cancelled, or another node holds them")
                    break
                handled += await self._handle(claimed[0], self._clock())
            except MetadataError as error:
                self._stop_round(error)
                break
        return handled

    def _stop_round(self, error: MetadataError) -> int:
        log.error("outbox: database error, stopping this round: %s", error)
        self._database_trouble = True
        return 0

    async def _record_unrecorded(self) -> int:
        """Commit the acceptances a database error kept from being recorded, before anything
        else is sent; MetadataError if the database still fails."""
        pending = list(self._unrecorded.values())
        for item, now, result in pending:
            await self._record_sent(item, now, result)
        return len(pending)

    async def _handle(self, item: OutboxItem, now: datetime) -> int:
        """One claimed item: sent and recorded, retried later, or given up."""
        if now - item.created_at > self._settings.max_age:
            last = f"; last error: {item.last_error}" if item.last_error else ""
            await self._give_up(item, now, f"not delivered within {self._settings.max_age}{last}")
            return 1
        try:
            outgoing = await asyncio.to_thread(self._composer.compose, item)
        except ComposeError as error:
            await self._give_up(item, now, f"cannot compose: {error}")
            return 1
        except MetadataError:
            raise
        except Exception:
            log.exception("outbox item %s (%s): composing failed", item.id, item.kind)
            await self._retry(item, now, "4.3.0 composing failed (internal error)")
            return 1
        result = await self._send(item, outgoing)
        if result.accepted:
            crash_point("notify.sent")
            if self._after_send is not None:
                self._after_send(item)
            await self._record_sent(item, now, result)
        elif result.temporary:
            await self._retry(item, now, f"{result.code} {result.message}")
        else:
            await self._give_up(item, now, f"{result.code} {result.message}")
        return 1

    async def _send(self, item: OutboxItem, outgoing: object) -> DeliveryResult:
        try:
            if isinstance(outgoing, OutgoingMessage):
                return await self._next_hop.deliver(outgoing)
            if isinstance(outgoing, WebhookCall):
                if self._webhooks is None:
                    return DeliveryResult(False, 550, "5.3.0 no webhook is configured")
                return await self._webhooks.send(outgoing)
        except Exception:  # the senders report trouble as results; this is a bug, not the network
            log.exception("outbox item %s (%s): sending failed", item.id, item.kind)
            return DeliveryResult(False, 451, "4.3.0 sending failed (internal error)")
        log.error("outbox item %s (%s): composer gave %s", item.id, item.kind,
                  type(outgoing).__name__)
        return DeliveryResult(False, 550, "5.3.0 nothing sendable was composed")

    # -- outcomes ------------------------------------------------------------------------

    async def _record_sent(self, item: OutboxItem, now: datetime, result: DeliveryResult) -> None:
        detail = {"code": result.code, "reply": result.message[:_SHORT_ERROR]}
        self._unrecorded[item.id] = (item, now, result)  # until the commit below succeeds
        recorded = await asyncio.to_thread(self._outbox.mark_sent, item, now, detail)
        del self._unrecorded[item.id]
        if recorded:
            log.info("outbox item %s (%s) sent: %d", item.id, item.kind, result.code)
        else:
            log.warning("outbox item %s (%s) sent, but it was no longer ours to record "
                        "(cancelled, or claimed by another node once our lease ran out)",
                        item.id, item.kind)

    async def _retry(self, item: OutboxItem, now: datetime, error: str) -> None:
        # No later than just past max_age, so the give-up (and the sender's note) is timely.
        last_chance = item.created_at + self._settings.max_age + timedelta(microseconds=1)
        try:
            next_due = min(now + backoff(self._settings, item.attempts), last_chance)
        except OverflowError:
            next_due = last_chance
        if not await asyncio.to_thread(self._outbox.mark_retry, item, next_due, error):
            log.info("outbox item %s (%s) was no longer ours when retrying", item.id, item.kind)
            return
        log.info("outbox item %s (%s) attempt %d failed (%s); next try at %s",
                 item.id, item.kind, item.attempts + 1, error[:_SHORT_ERROR], next_due.isoformat())

    async def _give_up(self, item: OutboxItem, now: datetime, error: str) -> None:
        short = error[:_SHORT_ERROR]
        note = None
        if item.kind != GIVE_UP_NOTE and item.transfer_id is not None:
            note = {
                "kind": GIVE_UP_NOTE, "due_at": now, "transfer_id": item.transfer_id,
                "link_id": item.link_id, "dedupe_key": f"{GIVE_UP_NOTE}:{item.id}",
                "payload": {"failed_kind": item.kind, "failed_item": item.id, "error": short},
            }
        if not await asyncio.to_thread(self._outbox.mark_gave_up, item, now, error, note):
            log.info("outbox item %s (%s) was no longer ours when giving up", item.id, item.kind)
            return
        log.warning("outbox item %s (%s) gave up: %s", item.id, item.kind, short)

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send rounds until `stop` is set; between rounds wait for the earliest due time, the
        poll interval, `wake` or `stop`, whichever comes first."""
        self._stop = stop
        while not stop.is_set():
            if self._wake is not None:
                self._wake.clear()  # a set() during the round below brings the next one at once
            try:
                handled = await self.run_once()
            except Exception:  # only a bug (or the test hook) gets here; keep serving
                log.exception("outbox round failed")
                handled, self._database_trouble = 0, True
            await self._wait(stop, await self._pause(handled))

    async def _pause(self, handled: int) -> float:
        """Seconds until the next round."""
        poll = self._settings.poll_interval.total_seconds()
        if self._database_trouble:
            return poll
        try:
            next_due = await asyncio.to_thread(self._outbox.next_due_at)
        except MetadataError as error:
            log.error("outbox: database error: %s", error)
            return poll
        if next_due is None:
            return poll
        seconds = (next_due - self._clock()).total_seconds()
        if seconds <= 0:
            # More is due (a full batch): go on; but a round that got nowhere waits.
            return 0.0 if handled else poll
        return min(poll, seconds)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        events = [stop] if self._wake is None else [stop, self._wake]
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
