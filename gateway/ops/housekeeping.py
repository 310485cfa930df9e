"""Purge what the gateway must no longer keep: files of expired, failed and abandoned transfers.

A purge first takes each such transfer out of use, in one statement that checks it is still
due (a retry may have just issued a link on a stale pending transfer: then it stays), then
deletes its blobs and then its files rows (with the wrapped data keys) and password, keeping
the transfer row and its events as the audit trail; a purge a crash interrupted is finished by
the next. It then removes the blobs no row refers to and the writes a crash left unfinished
(temp files, uncommitted chunk rows), as the blob backend lists them, but only when they are
older than a grace period, so a blob being written right now is never touched.

With a retention (`[retention]`), it then forgets what would otherwise grow with every message:
delivery records once no retry can still come, finished outbox items, and after the audit
retention the records of ended transfers (links, controls, codes) and the audit events
themselves. It deletes in bounded batches, one commit each, so a backlog never holds the write
lock for long. Every run also deletes the throttles' counts and the relay claims that have
ended. Finally the WAL is checkpointed so purged keys do not linger in it.

On a cluster one node purges at a time (purge_on_one_node, the store's "housekeeping" run lock):
the others skip their turn rather than do the same work at the same moment, and so does
`ppap-gateway purge`, saying so (PURGING_ELSEWHERE) and exiting 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Awaitable, Callable

from gateway.config import RetentionSettings
from gateway.crashpoints import crash_point
from gateway.store.blobs import BlobStore, StorageError
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from gateway.store.relaying import RelayClaims
from gateway.store.throttles import ThrottleStore

_log = logging.getLogger("gateway.housekeeping")
# Rows deleted per commit: small enough that a relay's commit waits milliseconds, not seconds.
RETENTION_BATCH = 500
# What `ppap-gateway purge` says when purge_on_one_node finds another process purging.
PURGING_ELSEWHERE = "another gateway process is purging this store now; nothing done"


@dataclass(frozen=True)
class PurgeReport:
    transfers_purged: int = 0
    blobs_deleted: int = 0  # blobs of purged transfers
    bytes_freed: int = 0  # transfer blobs, orphans and temp files together
    orphans_deleted: int = 0  # unreferenced blob files and leftover temp files
    errors: int = 0  # files that could not be deleted; tried again on the next run
    # What the retention forgot (rows; no files are involved):
    deliveries_forgotten: int = 0  # delivery records past retention.deliveries
    outbox_forgotten: int = 0  # sent, given-up and cancelled items past retention.outbox
    transfers_forgotten: int = 0  # ended transfers' records past retention.audit
    events_forgotten: int = 0  # audit events past retention.audit
    # Throttle counts and relay claims past their end (bookkeeping: not in format_report).
    expired_forgotten: int = 0


@dataclass
class _Tally:
    transfers: int = 0
    blobs: int = 0
    bytes: int = 0
    orphans: int = 0
    errors: int = 0
    forgotten: tuple[int, int, int, int] = (0, 0, 0, 0)
    expired: int = 0

    def report(self) -> PurgeReport:
        return PurgeReport(self.transfers, self.blobs, self.bytes, self.orphans, self.errors,
                           *self.forgotten, self.expired)


def purge(
    db: Database,
    blobs: BlobStore,
    now: datetime,
    *,
    stale_pending_after: timedelta = timedelta(hours=1),
    orphan_grace: timedelta = timedelta(hours=1),
    retention: RetentionSettings | None = None,
) -> PurgeReport:
    """Run one purge (blocking: call it in a thread from async code). Without a `retention`
    (the start-up clean-up) no record is forgotten, only files."""
    tally = _Tally()
    stale_before = now - stale_pending_after
    expired = db.failed_or_expired_transfers(now)
    stale = db.stale_pending_transfers(stale_before)
    unfinished = db.half_purged_transfers()
    due = dict.fromkeys([*expired, *stale, *unfinished])  # a transfer can be both; once
    for transfer_id in due:
        _purge_transfer(db, blobs, transfer_id, now, stale_before, tally)
    cutoff = (now - orphan_grace).timestamp()
    _delete_orphans(db, blobs, cutoff, tally)
    _delete_unfinished(blobs, cutoff, tally)
    if retention is not None:
        tally.forgotten = _apply_retention(db, now, retention)
    tally.expired = (_in_batches(lambda limit: ThrottleStore(db).forget_expired(now, limit))
                     + _in_batches(lambda limit: RelayClaims(db).forget_expired(now, limit)))
    db.checkpoint()
    return tally.report()


def purge_on_one_node(db: Database, blobs: BlobStore, now: datetime,
                      **options) -> PurgeReport | None:
    """purge(db, blobs, now, **options), unless another process, on any node, is purging the
    same store right now: None then (two purges at once would race for the same transfers and
    files for nothing)."""
    with db.exclusive_run("housekeeping") as ours:
        return purge(db, blobs, now, **options) if ours else None


def _in_batches(forget_batch: Callable[[int], int]) -> int:
    """Call `forget_batch(RETENTION_BATCH)` until a batch comes back short; the total."""
    total = 0
    while True:
        forgotten = forget_batch(RETENTION_BATCH)
        total += forgotten
        if forgotten < RETENTION_BATCH:
            return total


def _apply_retention(
    db: Database, now: datetime, retention: RetentionSettings
) -> tuple[int, int, int, int]:
    """Forget what is past its retention, after the files are gone (a transfer's records go
    only once its files have). Each batch is its own commit."""
    outbox = OutboxStore(db)
    deliveries = _in_batches(
        lambda limit: db.forget_deliveries_before(now - retention.deliveries, limit))
    items = _in_batches(
        lambda limit: outbox.forget_finished_before(now - retention.outbox, limit))
    transfers = _in_batches(
        lambda limit: db.forget_ended_transfers(now - retention.audit, limit))
    events = _in_batches(lambda limit: db.forget_events_before(now - retention.audit, limit))
    return deliveries, items, transfers, events


def _purge_transfer(
    db: Database, blobs: BlobStore, transfer_id: str, now: datetime, stale_before: datetime,
    tally: _Tally,
) -> None:
    transfer = db.transfer(transfer_id)
    if transfer is None:
        return
    if transfer.state in ("failed", "purged") and not db.blob_ids_of(transfer_id):
        return  # purged already (a failed one stays listed): there is nothing left to do
    # Out of use first, so no link on it becomes active and no retry reuses it once its
    # files start to go.
    end_state = db.claim_for_purge(transfer_id, now, stale_before)
    if end_state is None:
        return  # a retry is using it, or its sender extended it, since it was listed
    files = db.blob_ids_of(transfer_id)  # attachments and anything extracted from them
    freed = 0
    for blob_id in files:
        try:
            freed += blobs.delete(blob_id)
            tally.blobs += 1
        except StorageError as error:
            # The key goes anyway (the blob is unreadable without it); the blob is now an
            # orphan, and the orphan sweep tries again.
            _log.warning("purge: %s", error)
            tally.errors += 1
    crash_point("purge.blobs_deleted")
    with db.transaction():
        db.mark_purged(transfer_id, state=end_state)
        db.append_event(
            "transfer.purged", now, transfer_id=transfer_id,
            detail={"files": len(files), "bytes": freed, "state": end_state},
        )
    tally.transfers += 1
    tally.bytes += freed


def _delete_orphans(db: Database, blobs: BlobStore, cutoff: float, tally: _Tally) -> None:
    # Stored blobs first, then the rows: a blob committed in between is young, so the grace
    # spares it.
    old = [blob.name for blob in blobs.backend.stored() if blob.modified < cutoff]
    referenced = db.referenced_blob_ids()
    for blob_id in old:
        if blob_id in referenced:
            continue
        try:
            tally.bytes += blobs.delete(blob_id)
            tally.orphans += 1
        except StorageError as error:
            _log.warning("purge: %s", error)
            tally.errors += 1


def _delete_unfinished(blobs: BlobStore, cutoff: float, tally: _Tally) -> None:
    """Writes a crash left unfinished: temp files, or a database's uncommitted chunks."""
    for upload in blobs.backend.unfinished():
        if upload.modified >= cutoff:
            continue
        try:
            tally.bytes += blobs.backend.discard_unfinished(upload.name)
            tally.orphans += 1
        except StorageError as error:
            _log.warning("purge: %s", error)
            tally.errors += 1


def _size_text(size: int) -> str:
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_report(report: PurgeReport) -> str:
    """One line, e.g. "purged 3 transfers, 5 blobs, 12.3 MB freed, 0 orphans; past retention
    forgot 812 delivery records, 40 outbox items" (the retention part only when it forgot)."""
    text = (
        f"purged {_plural(report.transfers_purged, 'transfer')}, "
        f"{_plural(report.blobs_deleted, 'blob')}, {_size_text(report.bytes_freed)} freed, "
        f"{_plural(report.orphans_deleted, 'orphan')}"
    )
    forgotten = [
        _plural(count, noun) for count, noun in (
            (report.deliveries_forgotten, "delivery record"),
            (report.outbox_forgotten, "outbox item"),
            (report.transfers_forgotten, "transfer record"),
            (report.events_forgotten, "audit event"),
        ) if count
    ]
    if report.errors:
        text += f", {_plural(report.errors, 'error')} (retried next run)"
    if forgotten:
        text += f"; past retention forgot {', '.join(forgotten)}"
    return text


async def run_periodically(
    interval: timedelta,
    job: Callable[[], Awaitable[PurgeReport | None]],
    log: logging.Logger,
) -> None:
    """Run `job` every `interval` (first run after one interval) until cancelled.

    One log line per run (a job that returns None was skipped: another node ran it); a
    failing run is logged and the next one comes as planned. When
    cancelled during a run, the run is allowed to finish first: the caller closes the store
    right after, and a purge must not lose it halfway.
    """
    seconds = interval.total_seconds()
    if seconds <= 0:
        raise ValueError(f"purge interval must be positive, got {interval}")
    while True:
        await asyncio.sleep(seconds)
        started = time.monotonic()
        running = asyncio.ensure_future(job())
        try:
            report = await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.gather(running, return_exceptions=True)
            raise
        except Exception:
            log.exception("purge failed; next try in %s", interval)
            continue
        if report is None:
            log.info("purge: skipped, another node is purging the store")
            continue
        log.info("purge: %s (%.2f s)", format_report(report), time.monotonic() - started)
