"""The folder next hop (`outbox:PATH` in the configuration): each outgoing message becomes an
.eml file with a .json envelope.

The embedded default, so a newcomer sees results with no other mail server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from gateway.durable import fsync_directory, make_directories
from gateway.model import DeliveryResult, OutgoingMessage
from gateway.outbound.hop import failure


class FolderNextHop:
    """Write each message as NAME.eml plus a NAME.json envelope, for another process to pick up.

    The .json is written first and the .eml's rename is the commit point, so a reader that only
    looks at *.eml never sees a message without its envelope. Temporary files start with ".".
    The directory is created (0700) on first use; files are 0600, as they hold whole mails.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: Callable[[int], None] = os.fsync,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._clock = clock

    def describe(self) -> str:
        return f"outbox:{self.path.resolve()}"

    async def deliver(self, message: OutgoingMessage) -> DeliveryResult:
        return await asyncio.to_thread(self._write, message)

    async def check(self) -> bool:
        return await asyncio.to_thread(self._writable)

    async def close(self) -> None:
        return None

    def _writable(self) -> bool:
        probe = self.path / f".probe-{secrets.token_hex(8)}"
        try:
            self._ensure_directory()
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return False
        return True

    def _write(self, message: OutgoingMessage) -> DeliveryResult:
        queued_at = self._clock().astimezone(timezone.utc)
        name = f"{queued_at:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(8)}"
        envelope = {
            "mail_from": message.mail_from,
            "rcpt_tos": list(message.rcpt_tos),
            "queued_at": queued_at.isoformat(),
        }
        eml, sidecar = self.path / f"{name}.eml", self.path / f"{name}.json"
        try:
            self._ensure_directory()
            self._write_atomically(sidecar, json.dumps(envelope).encode("ascii"))
            self._write_atomically(eml, message.data)
        except OSError:
            # Not durable, so not accepted: remove what got through, the client will retry.
            for leftover in (eml, sidecar):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            return failure(451, "4.3.0 outbox write failed")
        return DeliveryResult(accepted=True, code=250, message=f"2.0.0 queued in outbox as {name}")

    def _write_atomically(self, final: Path, content: bytes) -> None:
        temporary = final.with_name(f".{final.name}.tmp")
        stream = os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        try:
            with stream:
                stream.write(content)
                stream.flush()
                self._fsync(stream.fileno())
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise
        fsync_directory(self.path, self._fsync)

    def _ensure_directory(self) -> None:
        make_directories(self.path, self._fsync)
