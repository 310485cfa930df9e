"""The password-mail stage: PPAP's second mail is recognised, its password opens the sender's
waiting ZIPs (gateway.pipeline.unlock_step), and it is held from the recipients whose links no
longer need it.

The recipients held are recorded as served in one commit (so the sender's retry does not pass
it on after all) and taken out of the envelope and the decision; what is left goes on like any
mail, with no second decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from gateway.errors import Stop, TempFail
from gateway.pipeline.transaction import Transaction
from gateway.pipeline.unlock_step import PasswordMailUnlocker, UnlockVerdict
from gateway.replies import DATA_IN_FLIGHT_FULL, OK, SCAN_UNAVAILABLE
from gateway.store.db import Database


class HoldPasswordMail:
    name = "password-mail"

    def __init__(self, unlocker: PasswordMailUnlocker | None, db: Database,
                 clock: Callable[[], datetime], wake_notices: Callable[[], None]):
        self._unlocker = unlocker
        self._db = db
        self._clock = clock
        self._wake_notices = wake_notices

    async def process(self, tx: Transaction) -> None:
        if self._unlocker is None:
            return
        decision = tx.decision
        verdict = await self._unlocker.handle(
            tx.envelope, lambda: tx.message, tx.classification, decision.policy
        )
        if verdict is None:
            return  # not a password mail for anything waiting (the usual case)
        outcome = tx.outcome
        outcome.decision = "password-mail"
        outcome.transfer_id = ",".join(verdict.transfer_ids)
        outcome.notes.append(f"password-mail {verdict.summary}")
        if verdict.busy:  # unlocking would not fit in the bytes in flight now
            raise TempFail(DATA_IN_FLIGHT_FULL, "password-mail")
        if verdict.tempfail:
            raise TempFail(SCAN_UNAVAILABLE, "password-mail")
        self._wake_notices()
        held = {r.lower() for r in verdict.held}
        if not held:
            return
        await asyncio.to_thread(self._remember_held, tx, verdict, held)
        remaining = tuple(r for r in tx.envelope.rcpt_tos if r.lower() not in held)
        if not remaining:
            raise Stop(OK, "password-mail")
        tx.envelope = replace(tx.envelope, rcpt_tos=remaining)
        tx.decision = replace(decision, recipients=tuple(
            r for r in decision.recipients if r.address.lower() not in held))

    def _remember_held(self, tx: Transaction, verdict: UnlockVerdict, held: set[str]) -> None:
        now = self._clock()
        with self._db.transaction():
            for rcpt in tx.envelope.rcpt_tos:
                if rcpt.lower() in held:
                    self._db.record_delivery(tx.fingerprint, rcpt, now,
                                             transfer_id=verdict.transfer_ids[0])
