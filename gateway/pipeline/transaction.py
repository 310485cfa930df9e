"""The one object a message is while the stages work on it, and what the log line says of it.

Each stage reads what earlier stages put here and adds its own part: the envelope and bytes as
received (made CRLF by the first stage), the fingerprint, the parsed tree and its
classification, the decision, the stored transfer, the copies to send (planned: each is made
only when its turn comes, and dropped once it went) and, per copy, the next hop's answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.message import Message

from gateway.containers.contents import ContentInspector
from gateway.model import (
    Classification,
    Decision,
    DeliveryResult,
    Envelope,
    IssuedLink,
    OutgoingMessage,
    StoredTransfer,
)
from gateway.pipeline.parse import MimeLimits
from gateway.replies import OK, Reply


@dataclass
class Outcome:
    """The answer for the client, and what the one log line says about the message."""

    reply: Reply = OK
    decision: str = "error"
    department: str = ""
    transfer_id: str = ""
    internal: int = 0
    external: int = 0
    converted_files: int = 0
    bytes_stored: int = 0  # plaintext bytes newly stored (not counting a retry's reused files)
    links_created: int = 0  # links whose mail the next hop accepted
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedCopy:
    """A message to send, not made yet: the original (no link) or one outside recipient's copy."""

    rcpt_tos: tuple[str, ...]
    link: IssuedLink | None = None

    @property
    def link_id(self) -> str | None:
        return self.link.link_id if self.link else None


@dataclass(frozen=True)
class Delivery:
    """One copy sent: to whom, with which link, and what the next hop said. Not its bytes: a copy
    is let go once it went, so that a message costs one copy at a time, not one per recipient."""

    rcpt_tos: tuple[str, ...]
    link_id: str | None
    result: DeliveryResult


@dataclass
class Transaction:
    envelope: Envelope
    raw: bytes
    received_at: datetime | None = None  # when the final dot came (a report's Arrival-Date)
    outcome: Outcome = field(default_factory=Outcome)
    fingerprint: str = ""
    limits: MimeLimits = field(default_factory=MimeLimits)
    inspector: ContentInspector | None = None  # set when the files must be looked into
    parsed: Message | None = None  # the tree; read it as `message`
    # How to parse, when classify vouched for the message without parsing it: done only if a
    # later stage reads `message` (a password mail's text, a failure report's subject)
    parse_later: Callable[[], Message] | None = None
    classification: Classification | None = None
    decision: Decision | None = None
    transfer: StoredTransfer | None = None
    copies: list[PlannedCopy] = field(default_factory=list)
    planned: PlannedCopy | None = None  # the copy whose turn it is
    copy: OutgoingMessage | None = None  # that copy, once made (rewritten, signed)
    # Set instead of `copy` when a converted copy could not be made safe after another copy had
    # gone to the next hop: it is answered as that recipient's permanent refusal.
    copy_refused: DeliveryResult | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    # What to undo if the transaction fails before any copy was handed to the next hop.
    rollbacks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # What the transaction holds until it ends, however it ends.
    releases: list[Callable[[], None]] = field(default_factory=list)

    @property
    def message(self) -> Message | None:
        """The parsed tree; parsed now if classify left it for later."""
        if self.parsed is None and self.parse_later is not None:
            self.parsed, self.parse_later = self.parse_later(), None
        return self.parsed

    @message.setter
    def message(self, tree: Message | None) -> None:
        self.parsed, self.parse_later = tree, None

    def let_go_of_decoded_files(self) -> None:
        """The files are stored, or nothing is to be stored: keep what the attachments are,
        not their decoded bytes (a kept attachment's were held until the answer, beside every
        copy made). Their `size` is 0 from here on; the stored files keep theirs."""
        def emptied(attachments):
            return tuple(replace(a, data=b"") for a in attachments)

        if self.classification is not None:
            self.classification = replace(
                self.classification, attachments=emptied(self.classification.attachments))
        if self.decision is not None:
            self.decision = replace(self.decision, to_convert=emptied(self.decision.to_convert))
