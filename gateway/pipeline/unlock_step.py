"""Finish the PPAP job: recognise the password mail, prove its password on the sender's waiting
ZIPs, open them within limits, scan what they hold, store it, and say what becomes of the
password mail (suppressed, replaced by a short notice, or passed).

Only decides and stores; the relay delivers what is left of the password mail.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from typing import Callable

from gateway.config import Config, Policy
from gateway.model import Classification, Envelope, ZipVerdict
from gateway.scan.clamd import ClamdScanner, ScanError, ScanUnavailable
from gateway.store.blobs import BlobStore
from gateway.store.db import Database, FileRow, TransferRow
from gateway.store.outbox import OutboxStore
from gateway.store.unlocks import ExtractedRow, UnlockStore
from gateway.unlock.candidates import password_candidates
from gateway.unlock.extract import ExtractLimits, ExtractRefused, extract_members, prove_password
from gateway.zipinspect import inspect_zip

log = logging.getLogger("gateway.unlock")


@dataclass(frozen=True)
class UnlockVerdict:
    transfer_id: str
    state: str  # 'unlocked' | 'blocked' | 'refused' | 'tempfail'
    action: str  # what becomes of the password mail for `recipients`: suppress|replace|pass
    recipients: tuple[str, ...]  # recipients of this mail whose link belongs to the transfer


@dataclass(frozen=True)
class _Waiting:
    transfer: TransferRow
    recipients: tuple[str, ...]
    zips: tuple[tuple[FileRow, bytes], ...]


class PasswordMailUnlocker:
    def __init__(
        self, config: Config, db: Database, blobs: BlobStore, scanner: ClamdScanner | None,
        clock: Callable[[], datetime], chunk_size: int,
    ):
        self._config = config
        self._db = db
        self._blobs = blobs
        self._scanner = scanner
        self._clock = clock
        self._chunk_size = chunk_size
        self._unlocks = UnlockStore(db)
        self._outbox = OutboxStore(db)
        limits = config.unlock
        self._limits = ExtractLimits(
            max_members=limits.max_members, max_total_bytes=limits.max_total_size,
            max_ratio=limits.max_ratio, max_depth=limits.max_depth,
        )

    async def handle(
        self, envelope: Envelope, message: Message, classification: Classification, policy: Policy
    ) -> UnlockVerdict | None:
        """None when this is not a password mail for anything waiting (the usual case: cheap)."""
        if classification.attachments or classification.signed_or_encrypted:
            return None
        now = self._clock()
        waiting = await asyncio.to_thread(self._waiting, envelope, policy, now)
        if not waiting:
            return None
        candidates = await asyncio.to_thread(password_candidates, message)
        for entry in waiting:
            password = await asyncio.to_thread(
                self._first_that_opens, entry, candidates, self._limits
            )
            if password is not None:
                return await self._unlock(entry, password, policy, now)
        return None

    # -- finding what the mail may belong to ----------------------------------------------

    def _waiting(self, envelope: Envelope, policy: Policy, now: datetime) -> list[_Waiting]:
        rcpts = {r.lower(): r for r in envelope.rcpt_tos}
        found = []
        since = now - policy.password_mail_window
        for transfer in self._unlocks.waiting_for_password(envelope.mail_from, since, now):
            linked = {l.recipient.lower() for l in self._db.links_of(transfer.id)
                      if l.state == "active"}
            overlap = tuple(rcpts[r] for r in rcpts if r in linked)
            if not overlap:
                continue
            zips = tuple(
                (row, data) for row in self._db.files_of(transfer.id)
                if (data := self._encrypted_zip_bytes(row)) is not None
            )
            if zips:
                found.append(_Waiting(transfer, overlap, zips))
        return found

    def _encrypted_zip_bytes(self, row: FileRow) -> bytes | None:
        data = b"".join(self._blobs.open(row.blob_id, row.wrapped_key))
        return data if inspect_zip(data).verdict is ZipVerdict.ENCRYPTED_ZIP else None

    @staticmethod
    def _first_that_opens(
        entry: _Waiting, candidates: list[str], limits: ExtractLimits
    ) -> str | None:
        # prove_password answers False (never raises) for a wrong password or a refused archive.
        for candidate in candidates:
            if all(prove_password(data, candidate, limits) for _, data in entry.zips):
                return candidate
        return None

    # -- opening, scanning, storing ---------------------------------------------------------

    async def _unlock(self, entry: _Waiting, password: str, policy: Policy, now: datetime):
        tid = entry.transfer.id
        try:
            opened = await asyncio.to_thread(self._extract, entry, password)
        except ExtractRefused as refused:
            # The ZIP stays behind its link, locked; the recipients still need the password.
            await asyncio.to_thread(
                self._unlocks.record, tid, "refused", "password-mail", now, reason=str(refused)
            )
            log.warning("unlock refused transfer=%s: %s", tid, refused)
            return UnlockVerdict(tid, "refused", "pass", entry.recipients)
        if self._scanner is not None:
            try:
                infected = await self._scan(opened)
            except (ScanUnavailable, ScanError) as error:
                if policy.on_scan_error == "tempfail":
                    log.warning("scan unavailable, password mail deferred: %s", error)
                    return UnlockVerdict(tid, "tempfail", "pass", entry.recipients)
                log.warning("scan unavailable, unlocking unscanned (on_scan_error=allow): %s",
                            error)
                infected = None
            if infected is not None:
                await asyncio.to_thread(self._block, entry, infected, now)
                return UnlockVerdict(tid, "blocked", "suppress", entry.recipients)
        stored = await asyncio.to_thread(self._store, entry, opened, policy, now)
        if not stored:
            return None  # another password mail unlocked it a moment ago
        await asyncio.to_thread(self._retire, entry, policy, now)
        return UnlockVerdict(tid, "unlocked", policy.password_mail, entry.recipients)

    def _extract(self, entry: _Waiting, password: str) -> list[tuple[FileRow, object]]:
        return [(row, extract_members(data, password, self._limits)) for row, data in entry.zips]

    async def _scan(self, opened) -> tuple[str, str] | None:
        for _, result in opened:
            for extracted in result.files:
                verdict = await self._scanner.scan(extracted.data)
                if not verdict.clean:
                    return extracted.display_name, verdict.signature or "unknown"
        return None

    def _block(self, entry: _Waiting, infected: tuple[str, str], now: datetime) -> None:
        name, signature = infected
        tid = entry.transfer.id
        with self._db.transaction():
            self._unlocks.record(tid, "blocked", "password-mail", now, reason=signature,
                                 detail={"file": name, "signature": signature})
            payload = {"file": name, "signature": signature}
            self._outbox.enqueue(kind="blocked-note", now=now, due_at=now, transfer_id=tid,
                                 payload=payload, dedupe_key=f"blocked-note:{tid}")
            admin = self._config.scan.admin_address
            if admin:
                self._outbox.enqueue(
                    kind="blocked-note", now=now, due_at=now, transfer_id=tid,
                    payload={**payload, "address": admin}, dedupe_key=f"blocked-admin:{tid}",
                )

    def _store(self, entry: _Waiting, opened, policy: Policy, now: datetime) -> bool:
        rows: list[ExtractedRow] = []
        try:
            for source, result in opened:
                for extracted in result.files:
                    view = memoryview(extracted.data)
                    info = self._blobs.write(
                        view[i:i + self._chunk_size]
                        for i in range(0, len(view), self._chunk_size)
                    )
                    rows.append(ExtractedRow(
                        id=info.blob_id, transfer_id=entry.transfer.id, source_file=source.id,
                        display_name=extracted.display_name, size=info.size, sha256=info.sha256,
                        blob_id=info.blob_id, wrapped_key=info.wrapped_key, position=len(rows),
                    ))
            recorded = self._unlocks.record(
                entry.transfer.id, "unlocked", "password-mail", now,
                keep_original=policy.keep_original_zip, extracted=tuple(rows),
                detail={"password_mail": policy.password_mail},
            )
        except BaseException:
            for row in rows:
                self._blobs.delete(row.blob_id)
            raise
        if not recorded:
            for row in rows:
                self._blobs.delete(row.blob_id)
        return recorded

    def _retire(self, entry: _Waiting, policy: Policy, now: datetime) -> None:
        tid = entry.transfer.id
        if policy.password_mail == "suppress":
            self._outbox.enqueue(
                kind="password-retired", now=now, due_at=now, transfer_id=tid,
                payload={"recipients": list(entry.recipients)},
                dedupe_key=f"password-retired:{tid}",
            )
        elif policy.password_mail == "replace":
            wanted = {r.lower() for r in entry.recipients}
            for link in self._db.links_of(tid):
                if link.state == "active" and link.recipient.lower() in wanted:
                    self._outbox.enqueue(
                        kind="password-replaced", now=now, due_at=now, transfer_id=tid,
                        link_id=link.id, dedupe_key=f"password-replaced:{link.id}",
                    )
