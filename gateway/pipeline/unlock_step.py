"""Finish the PPAP job: recognise the password mail, let its password open the sender's waiting
ZIPs, and say what becomes of the password mail (suppressed, replaced by a short notice, or
passed) for each of its recipients.

Only decides and records; opening, scanning and storing are gateway.unlock.opening's job, and
the relay delivers what is left of the password mail.

Two policies meet here. The password mail's own (its sender's department now, the `policy`
passed to `handle`) says whether this mail is a password mail at all: how far back
(`password_mail_window`) its sender's transfers are looked for. Each waiting transfer's own
(the policy it was made under, stored with it: `TransferOpener.policy_of`) says how that
transfer is unlocked: what to do when the scanner is away (`on_scan_error`), whether its ZIP
stays served (`keep_original_zip`), and what becomes of the password mail for that transfer's
recipients (`password_mail`: suppress, replace or pass).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from typing import Callable

from gateway.addresses import is_null_sender
from gateway.config import Policy
from gateway.model import Classification, Envelope
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from gateway.store.unlocks import UnlockStore
from gateway.unlock.candidates import password_candidates
from gateway.unlock.opening import (
    LockedTransfer,
    Opened,
    OpenOutcome,
    OpenState,
    TransferOpener,
)


@dataclass(frozen=True)
class UnlockVerdict:
    transfer_ids: tuple[str, ...]  # every transfer the mail's password was tried on
    states: tuple[str, ...]  # what came of each, in the same order
    held: tuple[str, ...]  # recipients the password mail is NOT relayed to
    tempfail: bool = False  # the scanner is unavailable: answer 4xx, the sender retries
    busy: bool = False  # the in-flight budget cannot hold an unlock now: 4xx, the sender retries

    @property
    def summary(self) -> str:
        return ", ".join(f"{t} {s}" for t, s in zip(self.transfer_ids, self.states))


@dataclass(frozen=True)
class _Waiting:
    locked: LockedTransfer
    recipients: tuple[str, ...]  # the password mail's recipients that hold a link to it
    policy: Policy  # the policy the transfer was made under: how it is unlocked


class PasswordMailUnlocker:
    def __init__(self, db: Database, opener: TransferOpener, clock: Callable[[], datetime]):
        self._db = db
        self._opener = opener
        self._clock = clock
        self._unlocks = UnlockStore(db)
        self._outbox = OutboxStore(db)

    async def handle(
        self, envelope: Envelope, message: Callable[[], Message], classification: Classification,
        policy: Policy,
    ) -> UnlockVerdict | None:
        """None when this is not a password mail for anything waiting (the usual case: cheap).
        Never one from the null sender: a bounce or an auto-reply quoting a password mail is
        no sender's password mail, and nothing may be sent back to it.

        `policy` is the password mail's own (its sender's department as configured now): it
        only bounds the search (`password_mail_window`). Each transfer found is unlocked under
        the policy it was made under (see the module's docstring)."""
        if classification.attachments or classification.signed_or_encrypted:
            return None
        if is_null_sender(envelope.mail_from):
            return None
        now = self._clock()
        waiting = await asyncio.to_thread(self._waiting, envelope, policy, now)
        if not waiting:
            return None
        # `message` parses it if classify did not need to (one plain text part)
        candidates = await asyncio.to_thread(lambda: password_candidates(message()))
        with self._opener.working_memory() as charged:
            if not charged:
                ids = tuple(entry.locked.transfer.id for entry in waiting)
                return UnlockVerdict(ids, ("busy",) * len(ids), (), tempfail=True, busy=True)
            opened: list[tuple[_Waiting, Opened]] = []
            try:
                return await self._unlock(waiting, candidates, now, opened)
            finally:
                for _, result in opened:  # decrypted and stored, but deferred or failed
                    await asyncio.to_thread(self._opener.discard, result)

    async def _unlock(
        self, waiting: list[_Waiting], candidates: list[str], now: datetime,
        opened: list[tuple[_Waiting, Opened]],
    ) -> UnlockVerdict | None:
        """Open what the candidates open; `opened` is left holding what was decrypted but not
        finished (recorded, or its files deleted): the caller deletes its files."""
        # Decrypt everything first, and ask the scanner before recording anything: a password
        # mail deferred for a missing scanner must not have unlocked half of what it opens.
        states: dict[str, OpenState] = {}
        for entry in waiting:
            result = await self._opener.decrypt(entry.locked, candidates, "password-mail", now)
            if isinstance(result, OpenOutcome):
                states[entry.locked.transfer.id] = result.state
            else:
                opened.append((entry, result))
        # One transfer that would wait for the scanner defers the whole mail (never half done).
        waits = any(entry.policy.on_scan_error == "tempfail" for entry, _ in opened)
        if waits and not await self._opener.scanner_ready():
            ids = tuple(entry.locked.transfer.id for entry, _ in opened)
            return UnlockVerdict(ids, ("tempfail",) * len(ids), (), tempfail=True)
        while opened:
            entry, result = opened[0]
            outcome = await self._opener.finish(
                entry.locked, result, entry.policy, "password-mail", now
            )
            opened.pop(0)  # finished: recorded, or its files deleted
            states[entry.locked.transfer.id] = outcome.state
            if outcome.state is OpenState.TEMPFAIL:  # clamd went away after answering PING
                return UnlockVerdict(
                    tuple(states), tuple(s.value for s in states.values()), (), tempfail=True)
            if outcome.state is OpenState.UNLOCKED:
                await asyncio.to_thread(self._retire, entry, now)
        if all(s in (OpenState.WRONG_PASSWORD, OpenState.ALREADY_DONE) for s in states.values()):
            return None
        return UnlockVerdict(
            tuple(states), tuple(s.value for s in states.values()),
            _held(waiting, states),
        )

    def _waiting(self, envelope: Envelope, policy: Policy, now: datetime) -> list[_Waiting]:
        rcpts = {r.lower(): r for r in envelope.rcpt_tos}
        since = now - policy.password_mail_window
        found = []
        for transfer, linked in self._unlocks.waiting_for_password(
                envelope.mail_from, tuple(rcpts.values()), since, now):
            overlap = tuple(rcpts[r] for r in rcpts if r in linked)
            locked = self._opener.locked(transfer)
            if locked is not None:
                found.append(_Waiting(locked, overlap, self._opener.policy_of(transfer)))
        return found

    def _retire(self, entry: _Waiting, now: datetime) -> None:
        tid = entry.locked.transfer.id
        if entry.policy.password_mail == "suppress":
            self._outbox.enqueue(
                kind="password-retired", now=now, due_at=now, transfer_id=tid,
                payload={"recipients": list(entry.recipients)},
                dedupe_key=f"password-retired:{tid}",
            )
        elif entry.policy.password_mail == "replace":
            self._opener.tell_recipients(
                tid, {r.lower() for r in entry.recipients}, now, "password-mail"
            )


def _held(waiting: list[_Waiting], states: dict[str, OpenState]) -> tuple[str, ...]:
    """Recipients the password mail is not relayed to: those whose links were opened (unless the
    transfer's policy passes it anyway) or blocked (its password never travels on). A recipient
    held for one transfer is held, whatever another transfer's policy says. A recipient who also
    holds a link whose archive was refused still gets it: that archive may need this password,
    while a ZIP that every candidate failed on does not."""
    held: dict[str, str] = {}
    refused: set[str] = set()
    for entry in waiting:
        state = states[entry.locked.transfer.id]
        for rcpt in entry.recipients:
            if state is OpenState.BLOCKED or (
                state is OpenState.UNLOCKED and entry.policy.password_mail != "pass"
            ):
                held[rcpt.lower()] = rcpt
            elif state is OpenState.REFUSED:
                refused.add(rcpt.lower())
    return tuple(rcpt for key, rcpt in held.items() if key not in refused)
