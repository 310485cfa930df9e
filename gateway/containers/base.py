"""What every container reader shares: the errors for a structure that cannot be read, and for
contents too large, too deep or too slow to inspect."""


class Unreadable(Exception):
    """The structure contradicts itself or runs past the data; the message is logged."""


class InspectionLimit(Exception):
    """Inspecting the contents would pass a limit (expanded bytes, nesting, records, time).

    What we cannot inspect must not pass: the caller refuses the message with this reason,
    which names the limit in words a sender can act on (ASCII, for the SMTP reply)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Unsupported(Exception):
    """A well-formed structure this reader cannot unpack (an unknown compression method): its
    contents stay unseen, so the caller holds the file back like an encrypted one."""


class InspectionTimedOut(Exception):
    """Inspecting the message took longer than allowed: on a busy machine a retry can pass."""
