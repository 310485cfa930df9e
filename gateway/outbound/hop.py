"""What every next hop is (the NextHop protocol) and how a refusal of our own is written."""

from __future__ import annotations

from typing import Protocol

from gateway.model import DeliveryResult, OutgoingMessage


class NextHop(Protocol):
    async def deliver(self, message: OutgoingMessage) -> DeliveryResult: ...

    async def check(self) -> bool:
        """True when the next hop can take mail right now (for a health endpoint)."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """A short name for logs, e.g. "smtp://relay:25 (starttls required)"."""
        ...


def failure(code: int, text: str, rejected: dict[str, tuple[int, str]] | None = None) -> DeliveryResult:
    return DeliveryResult(accepted=False, code=code, message=text, rejected_recipients=rejected or {})
