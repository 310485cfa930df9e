"""Open one locked transfer with a password: decrypt its encrypted ZIPs within limits, scan what
they hold, and store it encrypted at rest — or record why not.

Shared by the two ways a password arrives: the sender's password mail and the sender's unlock
form on the management page. Only the caller knows what becomes of the password mail.

Memory follows a chunk, not the archive: the stored ZIP is read in place (its blob's chunks
decrypted on demand, no plaintext on disk), each member is inflated straight into its own
encrypted blob, and clamd is fed from that blob chunk by chunk. What one unlock holds meanwhile
(`working_set`) is charged to the in-flight budget the SMTP listener charges for DATA; when it
does not fit, the unlock waits for the sender's retry (`busy`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import unicodedata
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from gateway.config import Config, Policy, department_policy
from gateway.containers.zipinspect import inspect_zip
from gateway.inflight import DataBudget
from gateway.model import ZipVerdict
from gateway.scan.clamd import ClamdScanner, ScanError, ScanUnavailable
from gateway.store.blobs import BlobInfo, BlobStore, BlobView
from gateway.store.db import Database, FileRow, TransferRow
from gateway.store.outbox import OutboxStore
from gateway.store.policies import stored_policy
from gateway.store.unlocks import ExtractedRow, UnlockStore
from gateway.unlock.extract import (
    ExtractLimits,
    ExtractRefused,
    ExtractResult,
    extract_members_into,
)
from gateway.unlock.zipdecrypt import CHUNK

log = logging.getLogger("gateway.unlock")

WRONG_PASSWORD = "wrong password"  # ExtractRefused's reason when only the password is at fault
_INFLATER = 8 * 1024 * 1024  # zlib's window, bzip2's blocks, an LZMA dictionary of that size
_DIRECTORY = 2 * 1024 * 1024  # an archive's central directory and its parsed entries


class OpenState(enum.Enum):
    UNLOCKED = "unlocked"  # clean (or unscanned by policy) and stored: the links serve the files
    BLOCKED = "blocked"  # a file is infected: the links answer 410
    REFUSED = "refused"  # the archive is not opened (bomb, limits, damage): stays locked
    TEMPFAIL = "tempfail"  # the scanner is unavailable and the policy says wait: nothing recorded
    WRONG_PASSWORD = "wrong-password"  # no candidate opened it: nothing recorded
    ALREADY_DONE = "already-done"  # another password won a moment ago
    BUSY = "busy"  # the in-flight budget cannot hold an unlock now: nothing done, try later


@dataclass(frozen=True)
class LockedTransfer:
    transfer: TransferRow
    zips: tuple[FileRow, ...]  # its encrypted ZIPs (blobs, read in place when opened)


@dataclass(frozen=True)
class OpenOutcome:
    state: OpenState
    detail: str = ""  # the refusal reason, or "file: signature" when blocked


# each encrypted ZIP with what it held, every file already stored as an encrypted blob
Opened = list[tuple[FileRow, ExtractResult[BlobInfo]]]


def working_set(limits: ExtractLimits, chunk_size: int) -> int:
    """The most one unlock holds in memory at a time: the chunks cached while reading the ZIP
    and each ZIP inside it in place, the pieces on their way (a decrypted chunk, its inflated
    output, the encryptor's pending chunk, a scan's chunk), one inflater, the directory."""
    views = (limits.max_depth + 1) * BlobView.CACHED_CHUNKS * chunk_size
    return views + 4 * CHUNK + 2 * chunk_size + _INFLATER + _DIRECTORY


class BlobSink:
    """Members stored as encrypted blobs as they inflate (gateway.unlock.extract.MemberSink)."""

    def __init__(self, blobs: BlobStore):
        self._blobs = blobs

    def keep(self, pieces) -> BlobInfo:
        return self._blobs.write(pieces)

    def reopen(self, kept: BlobInfo) -> BlobView:
        return self._blobs.view(kept.blob_id, kept.wrapped_key)

    def discard(self, kept: BlobInfo) -> None:
        self._blobs.delete(kept.blob_id)


class TransferOpener:
    def __init__(
        self, config: Config, db: Database, blobs: BlobStore, scanner: ClamdScanner | None,
        budget: DataBudget | None = None,
    ):
        """`budget`: the bytes in flight, shared with the SMTP listener (None: unbounded)."""
        self._config = config
        self._db = db
        self._blobs = blobs
        self._scanner = scanner
        self._budget = budget
        self._unlocks = UnlockStore(db)
        self._outbox = OutboxStore(db)
        settings = config.unlock
        self._limits = ExtractLimits(
            max_members=settings.max_members, max_total_bytes=settings.max_total_size,
            max_ratio=settings.max_ratio, max_depth=settings.max_depth,
        )
        # A budget smaller than one working set is taken whole: unlocks then run one at a time.
        self.working_set = working_set(self._limits, config.storage.chunk_size)
        if budget is not None:
            self.working_set = min(self.working_set, budget.limit)

    @contextmanager
    def working_memory(self) -> Iterator[bool]:
        """Charge one unlock's working set to the in-flight budget while the block runs; False
        (nothing charged) when the budget cannot hold it now: the caller answers busy."""
        if self._budget is None:
            yield True
            return
        if not self._budget.take(self.working_set):
            yield False
            return
        try:
            yield True
        finally:
            self._budget.give_back(self.working_set)

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
        zips = tuple(row for row in self._db.files_of(transfer.id) if self._is_encrypted_zip(row))
        return LockedTransfer(transfer, zips) if zips else None

    async def open(
        self, locked: LockedTransfer, candidates: list[str], policy: Policy, source: str,
        now: datetime,
    ) -> OpenOutcome:
        decrypted = await self.decrypt(locked, candidates, source, now)
        if isinstance(decrypted, OpenOutcome):
            return decrypted
        try:
            return await self.finish(locked, decrypted, policy, source, now)
        except BaseException:
            await asyncio.to_thread(self.discard, decrypted)
            raise

    async def decrypt(
        self, locked: LockedTransfer, candidates: list[str], source: str, now: datetime
    ) -> Opened | OpenOutcome:
        """What the ZIPs hold, stored as encrypted blobs no row names yet (finish records them,
        or `discard`), once a candidate opens them all; or why not (a refused archive is
        recorded: it stays locked whatever the password). Run inside working_memory()."""
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
        """Scan what was opened, then record it (unlocked) or block the transfer; the stored
        files are deleted unless they were recorded."""
        tid = locked.transfer.id
        if self._scanner is not None:
            try:
                infected = await self._scan(opened)
            except (ScanUnavailable, ScanError) as error:
                if policy.on_scan_error == "tempfail":
                    log.warning("scan unavailable, unlock of transfer=%s waits: %s", tid, error)
                    await asyncio.to_thread(self.discard, opened)
                    return OpenOutcome(OpenState.TEMPFAIL, str(error))
                log.warning("scan unavailable, transfer=%s unlocked unscanned"
                            " (on_scan_error=allow): %s", tid, error)
                infected = None
            if infected is not None:
                await asyncio.to_thread(self.discard, opened)
                await asyncio.to_thread(self._block, tid, infected, source, now)
                return OpenOutcome(OpenState.BLOCKED, f"{infected[0]}: {infected[1]}")
        stored = await asyncio.to_thread(self._record, locked, opened, policy, source, now)
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
        with self.working_memory() as charged:
            if not charged:
                return OpenOutcome(OpenState.BUSY)
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

    def _is_encrypted_zip(self, row: FileRow) -> bool:
        with self._blobs.view(row.blob_id, row.wrapped_key) as stored:
            return inspect_zip(stored).verdict is ZipVerdict.ENCRYPTED_ZIP

    def _first_that_opens(self, locked: LockedTransfer, candidates: list[str]) -> Opened | None:
        """Decrypt with each candidate in turn; each ZIP is decrypted once, by the candidate that
        proves itself on it (extraction makes the cheap checks before inflating). Each ZIP is
        read in place and its files stored as they inflate."""
        sink = BlobSink(self._blobs)
        for candidate in candidates:
            opened: Opened = []
            try:
                for row in locked.zips:
                    with self._blobs.view(row.blob_id, row.wrapped_key) as stored:
                        opened.append(
                            (row, extract_members_into(stored, candidate, self._limits, sink))
                        )
                return opened
            except ExtractRefused as refused:
                self.discard(opened)
                if refused.reason != WRONG_PASSWORD:
                    raise
            except BaseException:
                self.discard(opened)
                raise
        return None

    def discard(self, opened: Opened) -> None:
        """Delete the files stored for what was opened but is not recorded."""
        for _, result in opened:
            for extracted in result.files:
                self._blobs.delete(extracted.kept.blob_id)

    async def _scan(self, opened: Opened) -> tuple[str, str] | None:
        for _, result in opened:
            for extracted in result.files:
                verdict = await self._scanner.scan(self._stored_chunks(extracted.kept))
                if not verdict.clean:
                    return extracted.display_name, verdict.signature or "unknown"
        return None

    async def _stored_chunks(self, stored: BlobInfo) -> AsyncIterator[bytes]:
        """A stored file's plaintext, one chunk at a time, read and decrypted off the loop."""
        reader = await asyncio.to_thread(self._blobs.open, stored.blob_id, stored.wrapped_key)
        try:
            while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
                yield chunk
        finally:
            reader.close()

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

    def _record(
        self, locked: LockedTransfer, opened: Opened, policy: Policy, source: str, now: datetime
    ) -> bool:
        """Record the stored files as the transfer's, unless another password won meanwhile
        (then, or on failure, they are deleted)."""
        rows: list[ExtractedRow] = []
        for origin, result in opened:
            for extracted in result.files:
                info = extracted.kept
                rows.append(ExtractedRow(
                    id=info.blob_id, transfer_id=locked.transfer.id, source_file=origin.id,
                    display_name=extracted.display_name, size=info.size, sha256=info.sha256,
                    blob_id=info.blob_id, wrapped_key=info.wrapped_key, position=len(rows),
                ))
        try:
            recorded = self._unlocks.record(
                locked.transfer.id, "unlocked", source, now,
                keep_original=policy.keep_original_zip, extracted=tuple(rows),
                detail={"password_mail": policy.password_mail},
            )
        except BaseException:
            self.discard(opened)
            raise
        if not recorded:
            self.discard(opened)
        return recorded
