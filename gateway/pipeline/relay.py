"""The conductor: run one received message through the declared stages (gateway.pipeline.stages)
and turn how they ended into the one SMTP answer.

The answer is `250` only once the next hop has accepted every resulting message; any trouble of
ours or a temporary refusal downstream is a `4xx`, and the recipients already served are
remembered (by a fingerprint of envelope and content) so that the sender's retry reaches only
the rest. A stage ends the transaction by raising Stop (TempFail, PermFail); what a message's
own content brings about (limits, unparseable structure, a rewrite that cannot separate a file)
is answered with its reason; anything else is our trouble: logged, `451`, retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from gateway.config import Config
from gateway.containers.base import InspectionLimit, InspectionTimedOut
from gateway.errors import (
    RewriteError,
    Stop,
    StructureLimitExceeded,
    UnparseableMessage,
)
from gateway.model import Envelope
from gateway.outbound.dkim import DkimSigner
from gateway.outbound.hop import NextHop
from gateway.pipeline.admission import RelayingNow
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.stages import Pipeline, RelayServices, relay_pipeline
from gateway.pipeline.store_step import TransferWriter
from gateway.pipeline.transaction import Outcome, Transaction
from gateway.pipeline.unlock_step import PasswordMailUnlocker
from gateway.replies import OK, reply_for_exception
from gateway.scan.clamd import ClamdScanner
from gateway.store.db import Database
from gateway.store.durability import DeferredCommits, deferring_commits

__all__ = ["Outcome", "Relay"]

_PASSED_THROUGH = frozenset({"pass", "internal"})  # decisions for which nothing was stored

log = logging.getLogger("gateway.relay")

# What a message's own content brings about: answered with a reason, no traceback logged.
_REFUSALS = (StructureLimitExceeded, UnparseableMessage, InspectionLimit, InspectionTimedOut,
             RewriteError)


class Relay:
    def __init__(
        self,
        config: Config,
        db: Database,
        writer: TransferWriter,
        next_hop: NextHop,
        signer: DkimSigner,
        templates,
        clock: Callable[[], datetime],
        notices: NoticeQueue | None = None,
        wake_notices: Callable[[], None] = lambda: None,
        unlocker: PasswordMailUnlocker | None = None,
        scanner: ClamdScanner | None = None,
        relaying: RelayingNow | None = None,
    ):
        """`relaying`: the messages being relayed now, shared by the workers of `serve`."""
        self._clock = clock
        self._barrier = db.barrier
        self.pipeline: Pipeline = relay_pipeline(RelayServices(
            config, db, writer, next_hop, signer, templates, clock, notices, wake_notices,
            unlocker, scanner, relaying or RelayingNow(),
        ))

    async def handle(self, envelope: Envelope, raw: bytes) -> Outcome:
        # The message's commits are synced together with other sessions' (group commit),
        # once, before the answer: not one fsync per commit.
        with deferring_commits() as deferred:
            outcome = await self._relay(envelope, raw)
            await self._on_disk_before_answer(outcome, deferred)
        return outcome

    async def _on_disk_before_answer(self, outcome: Outcome, deferred: DeferredCommits) -> None:
        """What the answer tells the client is on disk first: the message's own commits; for
        a 250 it committed nothing for (already delivered), the records it read, which may be
        another process's commit not yet synced. A failed sync is a 4xx, never a 250."""
        if outcome.reply == OK and outcome.decision in _PASSED_THROUGH:
            # Passed on as it came, and the next hop has said yes: the message is the next
            # hop's now, and our record of it only spares a retry a duplicate. That record
            # rides on the next fsync anyone makes; a power cut before it can only mean a
            # duplicate, and only if this 250 never reached the client.
            return
        mark = deferred.last
        if not mark and outcome.reply.code < 300:
            mark = self._barrier.mark()
        if not mark:
            return
        try:
            await self._barrier.flush(mark)
        except OSError as error:
            log.error("cannot sync the database before answering: %s", error)
            outcome.reply = reply_for_exception(error)
            outcome.decision = "deferred"
            outcome.notes.append(f"sync failed: {error}")

    async def _relay(self, envelope: Envelope, raw: bytes) -> Outcome:
        tx = Transaction(envelope, raw, received_at=self._clock())
        outcome = tx.outcome
        try:
            await self._run(tx)
        except Stop as stop:
            outcome.reply, outcome.decision = stop.reply, stop.decision
            outcome.notes.extend(stop.notes)
        except _REFUSALS as error:
            # The message's fault (or, for a timeout, the moment's), answered with its reason:
            # the message line says it all.
            outcome.reply = reply_for_exception(error)
            outcome.decision = "refused" if outcome.reply.code >= 500 else "deferred"
            outcome.notes.append(f"{type(error).__name__}: {error}")
        except Exception as error:  # fail closed: our trouble is the sender's retry
            log.exception("relay failed: %s", type(error).__name__)
            outcome.reply = reply_for_exception(error)
            outcome.notes.append(type(error).__name__)
        finally:
            for release in tx.releases:
                release()
        return outcome

    async def _run(self, tx: Transaction) -> None:
        try:
            for stage in self.pipeline.per_message:
                await stage.process(tx)
            for planned in tx.copies:
                tx.planned, tx.copy, tx.copy_refused = planned, None, None
                for stage in self.pipeline.per_copy:
                    await stage.process(tx)
                tx.copy = None  # let it go before the next is made
            tx.planned = None
        except BaseException:
            for rollback in reversed(tx.rollbacks):
                await rollback()
            raise
        for stage in self.pipeline.finish:
            await stage.process(tx)
