"""Send stored files to a browser: one file as it was attached, or all of them as one ZIP.

Plaintext is produced a piece at a time in a worker thread (decrypting one chunk per step)
and written as it comes, so memory stays flat whatever the file size. Each file's size and
SHA-256 are checked against the metadata before its last chunk is released; any integrity
failure after the headers went out aborts the connection, so a client gets a short
download, never wrong bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import unicodedata
import zipfile
from datetime import datetime
from typing import IO, Generator, Protocol
from urllib.parse import quote

from aiohttp import web

from gateway.store.blobs import (
    BlobIntegrityError,
    BlobMissingError,
    BlobStore,
    StorageError,
)
from gateway.store.db import FileRow

log = logging.getLogger("gateway.web")

# What goes wrong with stored data, as opposed to with the program.
STORAGE_ERRORS = (BlobIntegrityError, BlobMissingError, StorageError)
PIECE_SIZE = 64 * 1024
# A file's stored chunks are handed over in batches: the thread hop per piece, not the bytes,
# was most of the portal's CPU (bench/download_throughput.py); 256 KiB keeps memory small.
FILE_BATCH_SIZE = 256 * 1024
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]+")
# RFC 5987 attr-char, besides letters and digits.
_ATTR_CHARS = "!#$&+-.^_`|~"
_ZIP_UNSAFE = re.compile(r"[/\\:]")


# -- names ----------------------------------------------------------------------------------


def download_name(name: str) -> str:
    """The stored name without what could spoof or break it (controls, bidi overrides);
    never empty. Browsers deal with path separators in a download name themselves."""
    kept = "".join(
        ch for ch in name
        if ch not in _BIDI_CONTROLS and unicodedata.category(ch) not in ("Cc", "Zl", "Zp")
    ).strip()
    return kept or "download"


def ascii_fallback(name: str) -> str:
    """For clients that ignore filename*: non-ASCII runs become '_', the extension stays."""
    fallback = _NOT_PRINTABLE_ASCII.sub("_", name)
    if not fallback.strip("_. "):
        extension = fallback.rpartition(".")[2] if "." in fallback else ""
        fallback = "download" + (f".{extension}" if extension.strip("_") else "")
    return fallback.replace("\\", "\\\\").replace('"', '\\"')


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback and the exact name (RFC 6266, RFC 5987)."""
    encoded = quote(name, safe=_ATTR_CHARS, encoding="utf-8", errors="surrogatepass")
    return f"attachment; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"


def zip_member_names(names: list[str]) -> list[str]:
    """Names for ZIP members: no directories or drive letters, no two alike (as Windows
    compares them), so extracting can neither escape its folder nor overwrite a sibling."""
    taken: set[str] = set()
    result = []
    for raw in names:
        name = _ZIP_UNSAFE.sub("_", download_name(raw))
        if not name.strip("."):
            name = "_" + name
        stem, dot, extension = name.rpartition(".")
        if not stem:
            stem, dot, extension = name, "", ""
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{stem} ({number}){dot}{extension}"
        taken.add(candidate.casefold())
        result.append(candidate)
    return result


# -- plaintext sources (called from worker threads) ---------------------------------------


def verified_chunks(blobs: BlobStore, file: FileRow) -> Generator[bytes, None, None]:
    """The file's plaintext, one chunk behind the decryption, so that the size and SHA-256
    can be checked before the last chunk is given out."""
    digest = hashlib.sha256()
    total = 0
    held: bytes | None = None
    with blobs.open(file.blob_id, file.wrapped_key) as reader:
        for chunk in reader:
            digest.update(chunk)
            total += len(chunk)
            if total > file.size:
                raise BlobIntegrityError(f"file {file.id}: longer than its recorded size")
            if held is not None:
                yield held
            held = chunk
    if total != file.size or digest.hexdigest() != file.sha256.lower():
        raise BlobIntegrityError(f"file {file.id}: size or SHA-256 differs from the record")
    yield held or b""


class PieceSource(Protocol):
    def next_piece(self) -> bytes | None: ...
    def close(self) -> None: ...


class FileSource:
    """The pieces of one file. next_piece() and close() may come from different threads."""

    def __init__(self, blobs: BlobStore, file: FileRow):
        self._blobs = blobs
        self._file = file
        self._chunks: Generator[bytes, None, None] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def next_piece(self) -> bytes | None:
        with self._lock:
            if self._closed:
                return None
            if self._chunks is None:
                self._chunks = verified_chunks(self._blobs, self._file)
            pieces, size = [], 0
            while size < FILE_BATCH_SIZE:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                pieces.append(chunk)
                size += len(chunk)
            return b"".join(pieces) if pieces else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._chunks is not None:
                self._chunks.close()


class _Sink:
    """A write-only stream for zipfile (no tell(): zipfile then writes data descriptors)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        return data


def _dos_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    if moment.year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


class ZipSource:
    """A standard ZIP (stored, UTF-8 names) of several files, built a piece at a time."""

    def __init__(self, blobs: BlobStore, files: list[FileRow], modified: datetime):
        self._blobs = blobs
        self._pending = list(zip(files, zip_member_names([f.display_name for f in files])))
        self._date_time = _dos_time(modified)
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, "w", zipfile.ZIP_STORED)  # type: ignore[arg-type]
        self._entry: IO[bytes] | None = None
        self._chunks: Generator[bytes, None, None] | None = None
        self._lock = threading.Lock()
        self._done = False

    def next_piece(self) -> bytes | None:
        with self._lock:
            if self._done:
                return None
            try:
                while self._sink.size < PIECE_SIZE and not self._done:
                    self._step()
            except BaseException:
                self._close_locked()
                raise
            return self._sink.take()

    def _step(self) -> None:
        if self._entry is None:
            if not self._pending:
                self._zip.close()
                self._done = True
                return
            file, name = self._pending.pop(0)
            self._chunks = verified_chunks(self._blobs, file)
            info = zipfile.ZipInfo(name, date_time=self._date_time)
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = file.size  # lets zipfile decide on ZIP64 up front
            info.external_attr = 0o644 << 16
            self._entry = self._zip.open(info, "w")
            return
        assert self._chunks is not None
        chunk = next(self._chunks, None)
        if chunk is None:
            self._entry.close()
            self._entry = self._chunks = None
        elif chunk:
            self._entry.write(chunk)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        """Leave the ZipFile closed whatever state it is in (its __del__ would complain)."""
        self._done = True
        if self._chunks is not None:
            self._chunks.close()
            self._chunks = None
        try:
            if self._entry is not None:
                self._entry.close()
            self._zip.close()
        except (ValueError, RuntimeError, OSError):
            pass  # only the in-memory sink is written: nothing of it is sent any more
        self._entry = None
        self._sink.take()


# -- sending --------------------------------------------------------------------------------


async def next_piece(source: PieceSource) -> bytes | None:
    return await asyncio.to_thread(source.next_piece)


async def close_source(source: PieceSource) -> None:
    # Shielded: a cancelled handler still has its source closed, once its last step is done.
    await asyncio.shield(asyncio.to_thread(source.close))


def abort_connection(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def stream_body(
    request: web.BaseRequest, response: web.StreamResponse, first: bytes, source: PieceSource
) -> str:
    """Write `first`, then every further piece; return 'complete', 'client_gone',
    'integrity' (stored data failed a check: connection aborted) or 'error'."""
    piece: bytes | None = first
    try:
        while piece is not None:
            if piece:
                await response.write(piece)
            piece = await next_piece(source)
        await response.write_eof()
    except ConnectionError:
        return "client_gone"
    except STORAGE_ERRORS as error:
        log.warning("download aborted mid-stream: %s", error)
        abort_connection(request)
        return "integrity"
    except Exception:
        log.exception("download aborted mid-stream")
        abort_connection(request)
        return "error"
    return "complete"
