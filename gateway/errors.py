"""The errors that end a message's transaction, in one place, importing nothing of ours:
gateway.replies maps every one of them to its SMTP reply.

Stop, TempFail and PermFail are how a stage of the pipeline ends the transaction with a reply
it chose. The others say what a message's own content brought about: a structure over the
limits, a structure the parser cannot read, a copy the rewrite cannot make safely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.replies import Reply


class Stop(Exception):
    """End the transaction with this reply; `decision` is the log line's word for why."""

    def __init__(self, reply: Reply, decision: str, *notes: str):
        super().__init__(reply.render())
        self.reply = reply
        self.decision = decision
        self.notes = notes


class TempFail(Stop):
    """A 4xx: something that can pass later (a scanner away, a busy machine)."""

    def __init__(self, reply: Reply, decision: str, *notes: str):
        if not reply.temporary:
            raise ValueError(f"TempFail needs a 4xx reply, got {reply.code}")
        super().__init__(reply, decision, *notes)


class PermFail(Stop):
    """A 5xx that names its reason: resending the same mail cannot help."""

    def __init__(self, reply: Reply, decision: str, *notes: str):
        if reply.code < 500:
            raise ValueError(f"PermFail needs a 5xx reply, got {reply.code}")
        super().__init__(reply, decision, *notes)


class StructureLimitExceeded(ValueError):
    """The message is over one of the MIME or header limits; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MimeLimitExceeded(StructureLimitExceeded):
    """Nested too deep, too many parts, or a part header too long (554 5.6.0)."""


class HeaderLimitExceeded(StructureLimitExceeded):
    """A header line too long or too many header fields (552 5.3.4, always refused)."""


class UnparseableMessage(ValueError):
    """The standard library's parser itself failed on this input."""


class RewriteError(ValueError):
    """The message cannot be rewritten (a path that names no part, a tree too deep, a copy
    that still holds a file)."""
