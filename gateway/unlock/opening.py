"""Open one locked transfer with a password: decrypt its encrypted ZIPs within limits, scan what
they hold, and store it encrypted at rest — or record why not.

Shared by the two ways a password arrives: the sender's password mail and the sender's unlock
form on the management page. Only the caller knows what becomes of the password mail.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from gateway.config import Config, Policy, department_policy
from gateway.containers.zipinspect import inspect_zip
from gateway.model import ZipVerdict
from gateway.scan.clamd import ClamdScanner, ScanError, ScanUnavailable
from gateway.store.blobs import BlobStore
from gateway.store.db import Database, FileRow, TransferRow
from gateway.store.outbox import OutboxStore
from gateway.store.policies import stored_policy
from gateway.store.unlocks import ExtractedRow, UnlockStore
from gateway.unlock.extract import (
    ExtractLimits,
    ExtractRefused,
    ExtractResult,
    extract_members,
)

log = logging.getLogger("gateway.unlock")

WRONG_PASSWORD = "wrong password"  # ExtractRefused's reason when only the password is at fault


class OpenState(enum.Enum):
    UNLOCKED = "unlocked"  # clean (or unscanned by policy) and stored: the links serve the files
    BLOCKED = "blocked"  # a file is infected: the links answer 410
    REFUSED = "refused"  # the archive is not opened (bomb, limits, damage): stays locked
    TEMPFAIL = "tempfail"  # the scanner is unavailable and the policy says wait: nothing recorded
    WRONG_PASSWORD = "wrong-password"  # no candidate opened it: nothing recorded
    ALREADY_DONE = "already-done"  # another password won a moment ago


@dataclass(frozen=True)
class LockedTransfer:
    transfer: TransferRow
    zips: tuple[tuple[FileRow, bytes], ...]  # its encrypted ZIPs, decrypted at rest (our layer)


@dataclass(frozen=True)
class OpenOutcome:
    state: OpenState
    detail: str = ""  # the refusal reason, or "file: signature" when blocked


Opened = list[tuple[FileRow, ExtractResult]]  # each encrypted ZIP with what it held


class TransferOpener:
    def __init__(
        self, config: Config, db: Database, blobs: BlobStore, scanner: ClamdScanner | None,
        chunk_size: int,
    ):
        self._config = config
        self._db = db
        self._blobs = blobs
        self._scanner = scanner
        self._chunk_size = chunk_size
        self._unlocks = UnlockStore(db)
        self._outbox = OutboxStore(db)
        settings = config.unlock
        self._limits = ExtractLimits(
            max_members=settings.max_members, max_total_bytes=settings.max_total_size,
            max_ratio=settings.max_ratio, max_depth=settings.max_depth,
        )

    def policy_of(self, transfer: TransferRow) -> Policy:
        """The policy that governs how `transfer` is unlocked: the one it was made under, as
        stored with it. A transfer stored before snapshots existed (migration 0005), or whose
        snapshot cannot be read, falls back to the current configuration's policy for its
        department (the default policy if that department is gone), as before."""
        return stored_policy(transfer) or department_policy(self._config, transfer.department)

    async def scanner_ready(self) -> bool:
        """False only when a scanner is configured and does not answer PING."""
        return self._scanner is None or await self._scanner.ping()

    def locked(self, transfer: TransferRow) -> LockedTransfer | None:
        """The transfer with its encrypted ZIPs, or None when there is nothing to open."""
        if self._unlocks.of(transfer.id) is not None:
            return None
        zips = tuple(
            (row, data) for row in self._db.files_of(transfer.id)
            if (data := self._encrypted_zip_bytes(row)) is not None
        )
        return LockedTransfer(transfer, zips) if zips else None

    async def open(
        self, locked: LockedTransfer, candidates: list[str], policy: Policy, source: str,
        now: datetime,
    ) -> OpenOutcome:
        decrypted = await self.decrypt(locked, candidates, source, now)
        if isinstance(decrypted, OpenOutcome):
            return decrypted
        return await self.finish(locked, decrypted, policy, source, now)

    async def decrypt(
        self, locked: LockedTransfer, candidates: list[str], source: str, now: datetime
    ) -> Opened | OpenOutcome:
        """What the ZIPs hold, once a candidate opens them all; or why not (a refused archive
        is recorded: it stays locked whatever the password)."""
        tid = locked.transfer.id
        try:
            opened = await asyncio.to_thread(self._first_that_opens, locked, candidates)
        except ExtractRefused as refused:
            # The ZIP stays behind its link, locked; the recipients still need the password.
            await asyncio.to_thread(
                self._unlocks.record, tid, "refused", source, now, reason=refused.reason
            )
            log.warning("unlock refused transfer=%s: %s", tid, refused.reason)
            return OpenOutcome(OpenState.REFUSED, refused.reason)
        return OpenOutcome(OpenState.WRONG_PASSWORD) if opened is None else opened

    async def finish(
        self, locked: LockedTransfer, opened: Opened, policy: Policy, source: str, now: datetime
    ) -> OpenOutcome:
        """Scan what was opened, then store it (unlocked) or block the transfer."""
        tid = locked.transfer.id
        if self._scanner is not None:
            try:
                infected = await self._scan(opened)
            except (ScanUnavailable, ScanError) as error:
                if policy.on_scan_error == "tempfail":
                    log.warning("scan unavailable, unlock of transfer=%s waits: %s", tid, error)
                    return OpenOutcome(OpenState.TEMPFAIL, str(error))
                log.warning("scan unavailable, transfer=%s unlocked unscanned"
                            " (on_scan_error=allow): %s", tid, error)
                infected = None
            if infected is not None:
                await asyncio.to_thread(self._block, tid, infected, source, now)
                return OpenOutcome(OpenState.BLOCKED, f"{infected[0]}: {infected[1]}")
        stored = await asyncio.to_thread(self._store, locked, opened, policy, source, now)
        return OpenOutcome(OpenState.UNLOCKED if stored else OpenState.ALREADY_DONE)

    async def open_with_password(
        self, transfer: TransferRow, password: str, now: datetime
    ) -> OpenOutcome:
        """The sender's unlock form: the password as typed (and NFKC-normalised, as IMEs give
        full-width forms). Once open, every recipient is told the link needs no ZIP password."""
        locked = await asyncio.to_thread(self.locked, transfer)
        if locked is None:
            return OpenOutcome(OpenState.ALREADY_DONE)
        typed = list(dict.fromkeys((password, unicodedata.normalize("NFKC", password).strip())))
        policy = self.policy_of(transfer)
        outcome = await self.open(locked, typed, policy, "sender-form", now)
        if outcome.state is OpenState.UNLOCKED:
            await asyncio.to_thread(self.tell_recipients, transfer.id, None, now, "sender-form")
        return outcome

    def tell_recipients(
        self, tid: str, recipients: set[str] | None, now: datetime, via: str
    ) -> None:
        """Queue "the files at your link no longer need the ZIP password" for the active links
        of `recipients` (lower-case addresses; None: every recipient). `via` is the source."""
        for link in self._db.links_of(tid):
            wanted = recipients is None or link.recipient.lower() in recipients
            if link.state == "active" and wanted:
                self._outbox.enqueue(
                    kind="password-replaced", now=now, due_at=now, transfer_id=tid,
                    link_id=link.id, dedupe_key=f"password-replaced:{link.id}",
                    payload={"scanned": self._scanner is not None, "via": via},
                )

    # -- opening ----------------------------------------------------------------------------

    def _encrypted_zip_bytes(self, row: FileRow) -> bytes | None:
        data = b"".join(self._blobs.open(row.blob_id, row.wrapped_key))
        return data if inspect_zip(data).verdict is ZipVerdict.ENCRYPTED_ZIP else None

    def _first_that_opens(self, locked: LockedTransfer, candidates: list[str]) -> Opened | None:
        """Decrypt with each candidate in turn; each ZIP is decrypted once, by the candidate that
        proves itself on it (extract_members makes the cheap checks before inflating)."""
        for candidate in candidates:
            try:
                return [(row, extract_members(data, candidate, self._limits))
                        for row, data in locked.zips]
            except ExtractRefused as refused:
                if refused.reason != WRONG_PASSWORD:
                    raise
        return None

    async def _scan(self, opened: Opened) -> tuple[str, str] | None:
        for _, result in opened:
            for extracted in result.files:
                verdict = await self._scanner.scan(extracted.data)
                if not verdict.clean:
                    return extracted.display_name, verdict.signature or "unknown"
        return None

    # -- recording --------------------------------------------------------------------------

    def _block(self, tid: str, infected: tuple[str, str], source: str, now: datetime) -> None:
        name, signature = infected
        payload = {"file": name, "signature": signature}
        with self._db.transaction():
            self._unlocks.record(tid, "blocked", source, now, reason=signature, detail=payload)
            self._outbox.enqueue(kind="blocked-note", now=now, due_at=now, transfer_id=tid,
                                 payload=payload, dedupe_key=f"blocked-note:{tid}")
            admin = self._config.scan.admin_address
            if admin:
                self._outbox.enqueue(
                    kind="blocked-note", now=now, due_at=now, transfer_id=tid,
                    payload={**payload, "address": admin}, dedupe_key=f"blocked-admin:{tid}",
                )

    def _store(
        self, locked: LockedTransfer, opened: Opened, policy: Policy, source: str, now: datetime
    ) -> bool:
        rows: list[ExtractedRow] = []
        try:
            for origin, result in opened:
                for extracted in result.files:
                    view = memoryview(extracted.data)
                    info = self._blobs.write(
                        view[i:i + self._chunk_size]
                        for i in range(0, len(view), self._chunk_size)
                    )
                    rows.append(ExtractedRow(
                        id=info.blob_id, transfer_id=locked.transfer.id, source_file=origin.id,
                        display_name=extracted.display_name, size=info.size, sha256=info.sha256,
                        blob_id=info.blob_id, wrapped_key=info.wrapped_key, position=len(rows),
                    ))
            recorded = self._unlocks.record(
                locked.transfer.id, "unlocked", source, now,
                keep_original=policy.keep_original_zip, extracted=tuple(rows),
                detail={"password_mail": policy.password_mail},
            )
        except BaseException:
            self._delete(rows)
            raise
        if not recorded:
            self._delete(rows)
        return recorded

    def _delete(self, rows: list[ExtractedRow]) -> None:
        for row in rows:
            self._blobs.delete(row.blob_id)
