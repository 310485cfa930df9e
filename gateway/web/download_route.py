"""The portal's downloads: POST /d/{token}/f/{file_id} (one file) and /d/{token}/all (a ZIP of
all), each counted as one download in the commit that audits it and queues the sender's
download notice, if they want one. A damaged file is found before the first byte leaves.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Callable
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.store.blobs import BlobIntegrityError, BlobStore
from gateway.store.db import Database, FileRow, TransferRow
from gateway.store.outbox import OutboxStore
from gateway.web.download import (
    STORAGE_ERRORS,
    FileSource,
    PieceSource,
    ZipSource,
    close_source,
    content_disposition,
    download_name,
    next_piece,
    stream_body,
)
from gateway.web.link_gate import LinkGate, LinkState

log = logging.getLogger("gateway.web")


class DownloadRoute:
    """POST /d/{token}/f/{file_id} and /d/{token}/all."""

    def __init__(self, *, gate: LinkGate, db: Database, blobs: BlobStore, outbox: OutboxStore,
                 timezone: ZoneInfo, clock: Callable[[], datetime],
                 wake_outbox: Callable[[], None]):
        self._gate = gate
        self._db = db
        self._blobs = blobs
        self._outbox = outbox
        self._timezone = timezone
        self._clock = clock
        self._wake_outbox = wake_outbox

    async def download_file(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, request.match_info["file_id"])

    async def download_all(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, None)

    # -- downloading ----------------------------------------------------------------------

    async def _download(self, request: web.Request, file_id: str | None) -> web.StreamResponse:
        target = {"file_id": file_id or "all"}
        checked = await self._gate.checked_post(request, target=target)
        if isinstance(checked, web.StreamResponse):
            return checked
        state, _ = checked
        assert state.link is not None and state.transfer is not None
        problem = self._gate.missing_proof(request, state)
        chosen = [f for f in state.files if file_id is None or f.id == file_id]
        if problem is None and (not chosen or (file_id is None and len(chosen) < 2)):
            problem = "no_such_file"
        if problem:
            return await self._gate.refuse(request, state, problem, target)
        source, name, length = self._source_for(state.transfer, chosen, file_id is None)
        noticed = None if file_id is None else chosen[0].display_name
        try:
            return await self._serve(request, state, source, name, length, target, noticed)
        finally:
            await close_source(source)

    def _source_for(
        self, transfer: TransferRow, chosen: list[FileRow], as_zip: bool
    ) -> tuple[PieceSource, str, int | None]:
        if as_zip:
            created = transfer.created_at.astimezone(self._timezone)
            name = f"files-{created:%Y%m%d}.zip"
            return ZipSource(self._blobs, chosen, created), name, None
        (file,) = chosen
        return FileSource(self._blobs, file), download_name(file.display_name), file.size

    async def _serve(
        self, request: web.Request, state: LinkState, source: PieceSource, name: str,
        length: int | None, target: dict[str, str], noticed: str | None,
    ) -> web.StreamResponse:
        try:
            first = await next_piece(source)  # a damaged file is found before any byte leaves
        except STORAGE_ERRORS as error:
            log.warning("portal: cannot serve %s: %s", target["file_id"], error)
            reason = "integrity" if isinstance(error, BlobIntegrityError) else "unreadable"
            return await self._gate.refuse(request, state, "storage", {**target, "error": reason})
        claimed, notice_queued = await asyncio.to_thread(
            self._claim, request, state, target, noticed
        )
        if not claimed:
            return await self._gate.refuse(request, state, "limit_reached", target)
        if notice_queued:
            self._wake_outbox()
        self._gate.emit("download", {})
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": content_disposition(name),
        })
        if length is not None:
            response.content_length = length
        try:
            await response.prepare(request)
            outcome = await stream_body(request, response, first or b"", source)
        except ConnectionError:
            outcome = "client_gone"
        if outcome != "complete":
            self._gate.emit("download_aborted", {"reason": outcome})
            if outcome == "integrity":  # counted as damage found before the first byte is
                self._gate.emit("refusal", {"reason": "storage"})
            # Shielded: the client is gone, and a server shutting down must not lose the record.
            await asyncio.shield(self._gate.audit("download.aborted", request, state,
                                                  {**target, "reason": outcome}))
        return response

    def _claim(self, request: web.Request, state: LinkState, target: dict[str, str],
               noticed: str | None) -> tuple[bool, bool]:
        """Count the download, audit it and queue the sender's notice, in one commit (runs
        in a worker thread). Returns (counted, notice queued)."""
        assert state.link is not None
        now = self._clock()
        with self._db.transaction():
            if not self._db.claim_download(state.link.id):
                return False, False
            self._db.append_event(
                "download", now, transfer_id=state.link.transfer_id,
                link_id=state.link.id, recipient=state.link.recipient,
                detail={**self._gate.client(request), **target, "outcome": "served"},
            )
            return True, self._queue_download_notice(state, noticed, now)

    def _queue_download_notice(self, state: LinkState, noticed: str | None,
                               now: datetime) -> bool:
        """Inside the claim's commit: a notice for the sender, if their choice calls for one.
        `noticed` is the file's name; None means all files as one ZIP."""
        mode = state.controls.notify_sender if state.controls else "never"
        if mode == "never":
            return False
        assert state.link is not None
        counted = self._db.link(state.link.id)  # read in the claim's commit: exact
        first = counted is not None and counted.download_count == 1
        if mode == "first-download" and not first:
            return False
        queued = self._outbox.enqueue(
            kind="download-notice", now=now, due_at=now, transfer_id=state.link.transfer_id,
            link_id=state.link.id,
            payload={"recipient": state.link.recipient, "file": noticed,
                     "at": now.isoformat(), "first": first},
            dedupe_key=f"download-notice:first:{state.link.id}" if first else None,
        )
        return queued is not None
