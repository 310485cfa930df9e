"""Scan the attachments the gateway is about to store, before it stores them.

Only what clamd can read is scanned: an encrypted ZIP (or 7z, Office file, PDF) is opaque until
its password arrives, and its contents are scanned then (gateway.unlock.opening). An infected
file refuses the whole message with a 5xx that names the signature: nothing is stored, nothing
is relayed, and the sender's MTA tells the sender why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.model import Attachment, Decision, ZipVerdict
from gateway.replies import Reply
from gateway.scan.clamd import ClamdScanner

log = logging.getLogger("gateway.scan")


@dataclass(frozen=True)
class Infection:
    position: int  # 1-based, among the attachments to store
    filename: str
    signature: str

    def reply(self) -> Reply:
        # Reply text stays ASCII: a Japanese name would reach the bounce as mojibake.
        name = self.filename if self.filename.isascii() and self.filename.isprintable() else ""
        shown = f' "{name[:80]}"' if name else ""
        return Reply(554, "5.7.1",
                     f"Virus found in attachment {self.position}{shown}: {self.signature[:100]}")


def scannable(attachment: Attachment) -> bool:
    if attachment.zip.verdict is ZipVerdict.ENCRYPTED_ZIP:
        return False
    return attachment.container is None or not attachment.container.encrypted


async def find_infection(scanner: ClamdScanner, decision: Decision) -> Infection | None:
    """The first infected attachment among those to store; raises ScanUnavailable/ScanError
    when clamd cannot answer (the caller applies the policy's on_scan_error)."""
    for position, attachment in enumerate(decision.to_convert, start=1):
        if not scannable(attachment):
            continue
        verdict = await scanner.scan(attachment.data)
        if not verdict.clean:
            return Infection(position, attachment.filename, verdict.signature or "unknown")
    return None
