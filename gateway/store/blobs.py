"""Keep encrypted file contents on disk, one file per blob, named only by a random blob id.

A blob at rest is the output of crypto.BlobEncryptor; its wrapped data key is returned
to the caller for the metadata store. Writes are durable before write() returns: temp
file in the target directory, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Generator, Iterable, Iterator

from gateway.durable import fsync_directory, make_directories
from gateway.store.crypto import (
    DEFAULT_CHUNK_SIZE,
    BlobEncryptor,
    BlobIntegrityError,
    SealedChunks,
    decrypt_blob,
)

__all__ = [
    "BlobInfo",
    "BlobIntegrityError",
    "BlobMissingError",
    "BlobReader",
    "BlobStore",
    "BlobView",
    "StorageError",
]

_BLOB_ID = re.compile(r"[0-9a-f]{32}")
TEMP_PREFIX = ".tmp-"


class StorageError(Exception):
    """The blob could not be written or removed (disk full, I/O error, fsync failure...)."""


class BlobMissingError(Exception):
    """No blob with that id exists."""


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


class _ViewFile(io.RawIOBase):
    def __init__(self, view: BlobView):
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        if whence == io.SEEK_SET and offset < 0:
            raise ValueError("negative seek position")
        self._position = max(0, base[whence] + offset)  # as io.BytesIO does
        return self._position

    def readinto(self, buffer) -> int:
        data = self._view[self._position:self._position + len(buffer)]
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def _check_blob_id(blob_id: str) -> None:
    if not _BLOB_ID.fullmatch(blob_id):
        raise ValueError(f"not a blob id: {blob_id!r}")


class BlobStore:
    def __init__(
        self,
        root: Path,
        master_key: bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        fsync: Callable[[int], None] = os.fsync,
        wrap_temp_file: Callable[[BinaryIO], BinaryIO] | None = None,
    ):
        """`fsync` and `wrap_temp_file` exist so tests can make the disk fail like a real one."""
        self.root = root
        self._master_key = master_key
        self._chunk_size = chunk_size
        self._fsync = fsync
        self._wrap_temp_file = wrap_temp_file

    def path_of(self, blob_id: str) -> Path:
        _check_blob_id(blob_id)
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    def write(self, chunks: Iterable[bytes]) -> BlobInfo:
        """Encrypt and store the concatenation of `chunks`; durable when this returns."""
        blob_id = secrets.token_hex(16)
        final = self.path_of(blob_id)
        encryptor = BlobEncryptor(self._master_key, blob_id, self._chunk_size)
        digest = hashlib.sha256()
        size = 0
        temp: Path | None = None
        try:
            make_directories(final.parent, self._fsync)
            fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=final.parent)
            temp = Path(temp_name)
            with os.fdopen(fd, "wb") as raw_file:
                out = self._wrap_temp_file(raw_file) if self._wrap_temp_file else raw_file
                out.write(encryptor.header)
                for piece in chunks:
                    digest.update(piece)
                    size += len(piece)
                    for sealed in encryptor.update(piece):
                        out.write(sealed)
                out.write(encryptor.finish())
                out.flush()
                self._fsync(raw_file.fileno())
            os.rename(temp, final)
            temp = final  # from here a failure must remove the renamed file
            fsync_directory(final.parent, self._fsync)
        except BaseException as exc:
            if temp is not None:
                temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot store blob {blob_id}: {exc}") from exc
            raise
        return BlobInfo(blob_id, size, digest.hexdigest(), encryptor.wrapped_key)

    def open(self, blob_id: str, wrapped_key: bytes) -> BlobReader:
        """Stream the plaintext of a blob; BlobIntegrityError stops it before a bad chunk."""
        try:
            source = open(self.path_of(blob_id), "rb")
        except FileNotFoundError as exc:
            raise BlobMissingError(f"blob {blob_id} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot open blob {blob_id}: {exc}") from exc
        return BlobReader(source, decrypt_blob(self._master_key, blob_id, wrapped_key, source))

    def view(self, blob_id: str, wrapped_key: bytes) -> BlobView:
        """Random access to the plaintext of a blob (see BlobView); close it when done."""
        try:
            source = open(self.path_of(blob_id), "rb")
        except FileNotFoundError as exc:
            raise BlobMissingError(f"blob {blob_id} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot open blob {blob_id}: {exc}") from exc
        try:
            size = os.fstat(source.fileno()).st_size
            return BlobView(source, SealedChunks(
                self._master_key, blob_id, wrapped_key, source, size))
        except BaseException:
            source.close()
            raise

    def exists(self, blob_id: str) -> bool:
        return self.path_of(blob_id).is_file()

    def delete(self, blob_id: str) -> int:
        """Remove a blob; return the bytes it occupied (0 if it was already gone)."""
        path = self.path_of(blob_id)
        try:
            size = path.stat().st_size
            path.unlink()
            fsync_directory(path.parent, self._fsync)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"cannot delete blob {blob_id}: {exc}") from exc
        return size

    def iter_blob_ids(self) -> Iterator[str]:
        """Every blob id present on disk (temp files and stray names are skipped)."""
        for directory, _subdirs, names in os.walk(self.root):
            for name in names:
                if _BLOB_ID.fullmatch(name) and Path(directory) == self.path_of(name).parent:
                    yield name

    def bytes_on_disk(self) -> int:
        """Bytes taken by everything under the root, unfinished temp files included."""
        total = 0
        for directory, _subdirs, names in os.walk(self.root):
            for name in names:
                try:
                    total += (Path(directory) / name).lstat().st_size
                except FileNotFoundError:
                    continue  # deleted while we walked
        return total
