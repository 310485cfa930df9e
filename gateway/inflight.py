"""The one budget of bytes the gateway holds in memory on a client's behalf at a time.

Charged by the SMTP listener for DATA (from the first byte until the reply) and by unlocking
for its working set (the chunks it reads, inflates and writes, while it runs), so that peak
memory follows this budget, not the mail. Used from the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataBudget:
    """Bytes that all sessions and unlocks hold, each from its start until it is done."""

    limit: int
    used: int = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size
