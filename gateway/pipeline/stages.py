"""The relay's stages, listed once, in order: this list is the pipeline.

Every stage has one signature, `async def process(tx)`, and a `name` for the log. The message
stages run once per message and plan the copies to send; then, for each copy in its turn, the
copy stages make it, sign it, look into it, send it and record it (recorded as delivered before
the next goes out, so a crash loses at most one record; let go before the next is made, so a
message for many recipients holds one copy at a time); then the finishing stages work out the
one answer. A stage ends the transaction only by raising
gateway.pipeline.errors.Stop (or TempFail, PermFail).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from gateway.config import Config
from gateway.outbound.dkim import DkimSigner
from gateway.outbound.hop import NextHop
from gateway.pipeline.admission import FrameBytes, RelayingNow, SkipServed
from gateway.pipeline.classify import Classify
from gateway.pipeline.conversion import PlanCopies, Rewrite, Sign, Store, Verify
from gateway.pipeline.delivery import Answer, Deliver, Record
from gateway.pipeline.dsn_step import FailureReports
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.password_mail import HoldPasswordMail
from gateway.pipeline.policy import Decide
from gateway.pipeline.scan_step import ScanStored
from gateway.pipeline.store_step import TransferWriter
from gateway.pipeline.transaction import Transaction
from gateway.pipeline.unlock_step import PasswordMailUnlocker
from gateway.scan.clamd import ClamdScanner
from gateway.store.db import Database


class Stage(Protocol):
    name: str

    async def process(self, tx: Transaction) -> None: ...


@dataclass(frozen=True)
class Pipeline:
    per_message: tuple[Stage, ...]
    per_copy: tuple[Stage, ...]
    finish: tuple[Stage, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in (*self.per_message, *self.per_copy, *self.finish))


@dataclass(frozen=True)
class RelayServices:
    """What the stages work with: the edges (store, next hop, scanner, clock) and the rest."""

    config: Config
    db: Database
    writer: TransferWriter
    next_hop: NextHop
    signer: DkimSigner
    templates: object  # the jinja2 environment of gateway/templates/ (or templates_dir)
    clock: Callable[[], datetime]
    notices: NoticeQueue | None = None
    wake_notices: Callable[[], None] = lambda: None
    unlocker: PasswordMailUnlocker | None = None
    scanner: ClamdScanner | None = None
    relaying: RelayingNow = field(default_factory=RelayingNow)


def relay_pipeline(services: RelayServices) -> Pipeline:
    s = services
    return Pipeline(
        per_message=(
            FrameBytes(),  # one reading of the bytes: NUL refused, line ends made CRLF
            SkipServed(s.db, s.relaying),  # a retry reaches only the recipients not yet served
            Classify(s.config),  # every leaf looked into, where a copy leaves the organisation
            Decide(s.config),  # per recipient: pass or convert; or refuse the whole message
            HoldPasswordMail(s.unlocker, s.db, s.clock, s.wake_notices),  # PPAP's second mail
            ScanStored(s.scanner, s.db, s.config, s.clock, s.wake_notices),  # what we would store
            Store(s.writer, s.clock),  # encrypted blobs, then one metadata commit
            PlanCopies(),  # the original inside, one copy per outside recipient: none made yet
        ),
        per_copy=(
            Rewrite(s.config, s.templates),  # the recipient's copy, with its link
            Sign(s.signer),  # DKIM, the last change to the bytes
            Verify(),  # what we inspect is what we send
            Deliver(s.next_hop),
            Record(s.db, s.notices, s.clock, s.wake_notices),
        ),
        finish=(
            Answer(s.writer, s.db, FailureReports(
                s.db, s.clock, s.wake_notices, s.config.gateway.hostname,
            )),
        ),
    )
