"""A next hop that says 250 to every copy and keeps what it was given: the relay without the
network (unit tests, bench/relay_cpu.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.model import DeliveryResult, OutgoingMessage


@dataclass
class AcceptingNextHop:
    keep: bool = True  # False: remember nothing (a long run)
    delivered: list[OutgoingMessage] = field(default_factory=list)

    async def deliver(self, message: OutgoingMessage) -> DeliveryResult:
        if self.keep:
            self.delivered.append(message)
        return DeliveryResult(True, 250, "2.0.0 Ok")

    async def check(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "accepting"
