"""Keep encrypted file contents on disk, one file per blob, named only by a random blob id.

A blob at rest is the output of crypto.BlobEncryptor; its wrapped data key is returned
to the caller for the metadata store. Writes are durable before write() returns: temp
file in the target directory, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Generator, Iterable, Iterator

from gateway.durable import fsync_directory, make_directories
from gateway.store.crypto import (
    DEFAULT_CHUNK_SIZE,
    BlobEncryptor,
    BlobIntegrityError,
    decrypt_blob,
)

__all__ = [
    "BlobInfo",
    "BlobIntegrityError",
    "BlobMissingError",
    "BlobReader",
    "BlobStore",
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
