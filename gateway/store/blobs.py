"""Encrypt file contents into blobs, each named only by a random blob id, and read them back.

A blob is the output of crypto.BlobEncryptor; its wrapped data key is returned to the caller
for the metadata store. Where the sealed bytes live is a BlobBackend's business
(gateway/store/blob_backends/: a local or shared directory, or PostgreSQL); a write is durable
when write() returns, and the backend's commit is what makes it visible.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Generator, Iterable, Iterator

from gateway.durable import Fsync
from gateway.store.blob_backends import (
    BlobBackend,
    BlobMissingError,
    StorageError,
)
from gateway.store.blob_backends.directory import TEMP_PREFIX, LocalDirectoryBackend
from gateway.store.blob_backends.positioned import PositionedReader
from gateway.store.crypto import (
    DEFAULT_CHUNK_SIZE,
    BlobEncryptor,
    BlobIntegrityError,
    SealedChunks,
    decrypt_blob,
)
from gateway.store.keys import KeyRing, key_ring

__all__ = [
    "BlobInfo",
    "BlobIntegrityError",
    "BlobMissingError",
    "BlobReader",
    "BlobStore",
    "BlobView",
    "StorageError",
    "TEMP_PREFIX",
]


@dataclass(frozen=True)
class BlobInfo:
    blob_id: str  # 32 hex chars
    size: int  # plaintext bytes
    sha256: str  # hex digest of the plaintext
    wrapped_key: bytes  # for the metadata store; never written next to the blob


class BlobReader(Iterator[bytes]):
    """Plaintext chunks of one blob; owns the open file and closes it when done or dropped."""

    def __init__(self, source: BinaryIO, chunks: Generator[bytes, None, None]):
        self._source = source
        self._chunks = chunks

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._chunks.close()
        self._source.close()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class BlobView:
    """A blob's plaintext as a read-only sequence of bytes for readers that seek (a ZIP's
    directory is at its end): slices, find and rfind read and authenticate only the chunks they
    touch, and keep the last few; a reader never holds the blob, nor writes plaintext anywhere.

    Slices follow bytes' rules (negative and out-of-range bounds included), so code written for
    bytes reads a blob unchanged. One thread at a time; close() (or `with`) closes the file.
    """

    CACHED_CHUNKS = 4

    def __init__(self, source: BinaryIO, chunks: SealedChunks):
        self._source = source
        self._chunks = chunks
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return self._chunks.plaintext_size

    def __getitem__(self, key: slice | int) -> bytes | int:
        if isinstance(key, int):
            index = key + len(self) if key < 0 else key
            if not 0 <= index < len(self):
                raise IndexError("blob index out of range")
            return self[index:index + 1][0]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("a blob view slices with step 1 only")
        return b"".join(self.pieces(start, stop)) if start < stop else b""

    def pieces(self, start: int, stop: int) -> Iterator[bytes]:
        """The bytes of [start, stop) as they lie in the chunks, without joining them."""
        size = self._chunks.chunk_size
        while start < stop:
            index, offset = divmod(start, size)
            chunk = self._chunk(index)
            piece = chunk[offset:offset + stop - start]
            if not piece:
                return
            yield piece
            start += len(piece)

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(len(self))
        window = max(self._chunks.chunk_size, 2 * len(sub))
        position = start
        while position < end:
            stop = min(end, position + window + len(sub) - 1)
            found = self[position:stop].find(sub)
            if found >= 0:
                return position + found
            position += window
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(len(self))
        window = max(self._chunks.chunk_size, 2 * len(sub))
        position = end
        while position > start:
            low = max(start, position - window)
            found = self[low:min(end, position + len(sub) - 1)].rfind(sub)
            if found >= 0:
                return low + found
            position = low
        return -1

    def file(self) -> io.RawIOBase:
        """A seekable, read-only file over the view, for readers that want one (pyzipper)."""
        return _ViewFile(self)

    def _chunk(self, index: int) -> bytes:
        chunk = self._cache.get(index)
        if chunk is None:
            try:
                chunk = self._cache[index] = self._chunks.chunk(index)
            except OSError as exc:  # the disk's trouble, never the content's: not an OSError
                raise StorageError(f"cannot read a blob: {exc}") from exc
            if len(self._cache) > self.CACHED_CHUNKS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return chunk

    def close(self) -> None:
        self._cache.clear()
        self._source.close()

    def __enter__(self) -> BlobView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _ViewFile(PositionedReader):
    def __init__(self, view: BlobView):
        super().__init__()
        self._view = view

    def _size(self) -> int:
        return len(self._view)

    def _read_at(self, offset: int, size: int) -> Iterator[bytes]:
        end = len(self._view)
        return self._view.pieces(offset, end if size < 0 else min(end, offset + size))


class BlobStore:
    """Seals what is written into one backend, and opens it again. Safe to share between
    threads as far as its backend is (both backends are)."""

    def __init__(
        self,
        backend: BlobBackend | Path,
        master_keys: KeyRing | bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        fsync: Fsync | None = None,
        wrap_temp_file: Callable[[BinaryIO], BinaryIO] | None = None,
    ):
        """A Path stands for a LocalDirectoryBackend there (given `fsync` and
        `wrap_temp_file`, which tests use to make the disk fail like a real one)."""
        if isinstance(backend, Path):
            backend = LocalDirectoryBackend(backend, fsync or os.fsync, wrap_temp_file)
        elif fsync is not None or wrap_temp_file is not None:
            raise ValueError("fsync and wrap_temp_file are for a local directory")
        self.backend = backend
        self._master_keys = key_ring(master_keys)  # sealed with the current, opened with any
        self._chunk_size = chunk_size

    def write(self, chunks: Iterable[bytes]) -> BlobInfo:
        """Encrypt and store the concatenation of `chunks`; durable when this returns."""
        blob_id = secrets.token_hex(16)
        encryptor = BlobEncryptor(self._master_keys, blob_id, self._chunk_size)
        digest = hashlib.sha256()
        size = 0
        upload = self.backend.begin(blob_id)
        try:
            upload.write(encryptor.header)
            for piece in chunks:
                digest.update(piece)
                size += len(piece)
                for sealed in encryptor.update(piece):
                    upload.write(sealed)
            upload.write(encryptor.finish())
            upload.commit()
        except BaseException as exc:
            upload.abandon()
            if isinstance(exc, OSError):  # the source's: StorageError as the backend's are
                raise StorageError(f"cannot store blob {blob_id}: {exc}") from exc
            raise
        return BlobInfo(blob_id, size, digest.hexdigest(), encryptor.wrapped_key)

    def open(self, blob_id: str, wrapped_key: bytes) -> BlobReader:
        """Stream the plaintext of a blob; BlobIntegrityError stops it before a bad chunk."""
        source = self.backend.open(blob_id, sequential=True)
        return BlobReader(source, decrypt_blob(self._master_keys, blob_id, wrapped_key, source))

    def view(self, blob_id: str, wrapped_key: bytes) -> BlobView:
        """Random access to the plaintext of a blob (see BlobView); close it when done."""
        source = self.backend.open(blob_id)
        try:
            size = source.seek(0, io.SEEK_END)
            return BlobView(source, SealedChunks(
                self._master_keys, blob_id, wrapped_key, source, size))
        except BaseException:
            source.close()
            raise

    def exists(self, blob_id: str) -> bool:
        return self.backend.exists(blob_id)

    def delete(self, blob_id: str) -> int:
        """Remove a blob; return the bytes it occupied (0 if it was already gone)."""
        return self.backend.delete(blob_id)

    def iter_blob_ids(self) -> Iterator[str]:
        """Every blob committed (unfinished writes are not blobs yet)."""
        return (blob.name for blob in self.backend.stored())

    def bytes_on_disk(self) -> int:
        """Bytes taken by every blob, unfinished writes included."""
        return self.backend.bytes_stored()

    def close(self) -> None:
        self.backend.close()

    # For tests and tools that look at the files of a local directory.

    @property
    def root(self) -> Path:
        return self._directory().root

    def path_of(self, blob_id: str) -> Path:
        return self._directory().path_of(blob_id)

    def _directory(self) -> LocalDirectoryBackend:
        if not isinstance(self.backend, LocalDirectoryBackend):
            raise TypeError(f"blobs are not files in a directory: {type(self.backend).__name__}")
        return self.backend
