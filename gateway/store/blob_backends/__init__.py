"""Where sealed blob bytes live: the BlobBackend protocol, apart from how they are sealed.

gateway.store.blobs.BlobStore encrypts, digests and counts; a backend only keeps the sealed
bytes it is handed, under the blob id it is given, and hands them back by offset. Two exist:
`directory.LocalDirectoryBackend` (one file per blob, a local or shared file system) and
`postgres.PostgresChunkBackend` (rows of a PostgreSQL table, so that the nodes of a cluster need
nothing but the database). The pipeline and the portal see only BlobStore.

What every backend promises:

* A blob is visible (open, exists, listed by `stored`) only once `commit()` of its upload has
  returned, and then durably, on every node at once; never a part of it. An upload that is
  abandoned, or whose writer died, is never visible: it is listed by `unfinished` until the
  housekeeping sweep, after a grace period, discards it.
* Blob ids are 32 lower-case hex characters (`check_blob_id`), random, never reused; a blob's
  bytes never change once committed, so readers need no lock.
* Trouble with the storage itself raises StorageError (its cause kept: a full disk stays an
  ENOSPC OSError in the chain); a blob that is not there raises BlobMissingError.

An S3-compatible object store would fit the same protocol (docs/blob-backends.md; not built):
`begin` starts a multipart upload (parts of at least 5 MiB except the last, so the upload
buffers up to one part), `commit` completes it, and completion is the only "rename" an object
store has: the object appears whole or not at all. `abandon` aborts it; `unfinished` lists the
incomplete multipart uploads (with their initiation time) and `discard_unfinished` aborts one,
which is also what a bucket lifecycle rule can do. `open` returns a file whose reads are ranged
GETs (Range: bytes=a-b), its size from HEAD. `stored` is a paginated LIST of the key prefix,
`delete` a DELETE after a HEAD for the size. Since 2020 AWS S3 is strongly consistent for all of
these (read-after-write, list-after-write); other implementations (older MinIO, Ceph RGW in
multi-site setups) may list late, which only delays the orphan sweep, but a GET right after the
commit must find the object, or a download on another node fails: such a store needs that
guarantee checked before use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol

__all__ = [
    "BlobBackend",
    "BlobMissingError",
    "BlobUpload",
    "StorageError",
    "StoredBlob",
    "check_blob_id",
]

_BLOB_ID = re.compile(r"[0-9a-f]{32}")


class StorageError(Exception):
    """The blob could not be written, read or removed (disk full, I/O error, fsync failure,
    database unreachable...)."""


class BlobMissingError(Exception):
    """No blob with that id exists (or it went while it was being read)."""


def is_blob_id(name: str) -> bool:
    return _BLOB_ID.fullmatch(name) is not None


def check_blob_id(blob_id: str) -> None:
    """A blob id becomes a path or a key: anything else is refused before it is used."""
    if not is_blob_id(blob_id):
        raise ValueError(f"not a blob id: {blob_id!r}")


@dataclass(frozen=True)
class StoredBlob:
    """One entry of a backend's listing, for the housekeeping sweeps."""

    name: str  # the blob id; for an unfinished upload, what discard_unfinished takes
    size: int  # sealed bytes it occupies
    modified: float  # when it was last written, seconds since the epoch (compare to a cutoff)


class BlobUpload(Protocol):
    """The sealed bytes of one new blob, handed over in order, piece by piece."""

    def write(self, sealed: bytes) -> None:
        """Append; raises StorageError. Memory stays bounded whatever the blob's size."""

    def commit(self) -> None:
        """Make the blob durable and visible everywhere; raises StorageError, and then the
        blob is not visible (the caller abandons the upload)."""

    def abandon(self) -> None:
        """Forget what was written. Never raises for the storage's trouble: what it cannot
        remove stays listed by `unfinished`, for the sweep."""


class BlobBackend(Protocol):
    def begin(self, blob_id: str) -> BlobUpload:
        """Start writing a new blob; raises StorageError."""

    def open(self, blob_id: str, *, sequential: bool = False) -> BinaryIO:
        """The committed blob's sealed bytes as a read-only, seekable binary file (its size is
        `seek(0, SEEK_END)`); reads raise StorageError or BlobMissingError. Close it.
        `sequential`: the caller reads it from start to end, so reading ahead pays."""

    def exists(self, blob_id: str) -> bool: ...

    def delete(self, blob_id: str) -> int:
        """Remove a committed blob; the sealed bytes freed (0 if it was already gone)."""

    def stored(self) -> Iterator[StoredBlob]:
        """Every committed blob (for the orphan sweep)."""

    def unfinished(self) -> Iterator[StoredBlob]:
        """Uploads never committed: being written now, or left by a crash (for the sweep)."""

    def discard_unfinished(self, name: str) -> int:
        """Remove one unfinished upload that `unfinished` listed; the bytes freed (0 if gone,
        or if it was committed meanwhile)."""

    def bytes_stored(self) -> int:
        """Bytes taken by everything the backend holds, unfinished uploads included."""

    def close(self) -> None: ...
