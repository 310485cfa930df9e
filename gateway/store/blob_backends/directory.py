"""Keep sealed blobs as files in a directory, one per blob: root/ab/cd/<blob id>.

A new blob is written to a temp file (TEMP_PREFIX) in its final directory, the file fsync'd,
renamed to its final name, and the directory fsync'd: only then is it committed. Readers open
final names only, so they never see a blob in the making; the housekeeping sweep removes temp
files a crash left behind once they are older than its grace period.

The same directory may be a shared file system mounted on every node (NFS v4, CephFS...), so
that a blob written by one node is read by another. What this relies on, and so what such a
mount must give:

* Rename within one directory is atomic: another node sees no name, or the whole file under
  it. NFS v4 (one RENAME operation on the server) and CephFS (one MDS operation) do; the temp
  file sits in the final directory so the rename never crosses directories or mounts.
* fsync of the file means its bytes are on the server's stable storage: NFS turns it into a
  COMMIT, which an export with `sync` (the Linux default) honours and an `async` export does
  not: there the server answers before its disk has the data, and a server crash loses blobs we
  already acknowledged (AEAD then refuses them on download; nothing is served wrong, but the
  mail's files are gone). Use `sync` exports and `hard` mounts (a `soft` mount turns a server
  pause into I/O errors, here 451s).
* fsync of the directory makes the rename durable on local disks and CephFS; an NFS server
  makes directory operations stable before it answers them, so there it costs little.
* Another node sees the new name as soon as it opens it: NFS close-to-open consistency gives
  that (an open revalidates with the server; we only open names after the metadata commit
  that announces them, and ids are random, so no negative lookup is cached for them). Mounts
  with `nocto`, or long attribute/lookup caching (`actimeo`, `lookupcache=all` with names
  looked up early), may hide a fresh blob from other nodes for seconds: a download there
  fails until the cache expires. `lookupcache=positive` is the safe choice.
* A blob deleted on one node while another node streams it: on a local disk the open file
  keeps its bytes; over NFS the reader gets ESTALE and the download is cut (purges delete only
  blobs of ended transfers, so this is rare). Stray `.nfsXXXX` files (NFS "silly renames") are
  neither blob names nor temp names: the sweeps leave them.
* Modification times come from the file server's clock over NFS; the sweep's grace period (an
  hour) absorbs a skew of minutes between nodes and server.

File systems without these guarantees (object stores mounted through FUSE such as s3fs, where
rename is a copy and fsync may do nothing; SMB/CIFS with caching on) are not supported for the
shared case: use the PostgreSQL backend, or an object store backend (docs/blob-backends.md).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

from gateway.durable import Fsync, fsync_directory, make_directories
from gateway.store.blob_backends import (
    BlobMissingError,
    StorageError,
    StoredBlob,
    check_blob_id,
    is_blob_id,
)

TEMP_PREFIX = ".tmp-"


class LocalDirectoryBackend:
    def __init__(
        self,
        root: Path,
        fsync: Fsync = os.fsync,
        wrap_temp_file: Callable[[BinaryIO], BinaryIO] | None = None,
    ):
        """`fsync` and `wrap_temp_file` exist so tests can make the disk fail like a real one."""
        self.root = root
        self._fsync = fsync
        self._wrap_temp_file = wrap_temp_file

    def path_of(self, blob_id: str) -> Path:
        check_blob_id(blob_id)
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    def begin(self, blob_id: str) -> _TempFileUpload:
        return _TempFileUpload(blob_id, self.path_of(blob_id), self._fsync, self._wrap_temp_file)

    def open(self, blob_id: str, *, sequential: bool = False) -> BinaryIO:
        # Buffered either way; the kernel reads ahead for sequential readers.
        try:
            return open(self.path_of(blob_id), "rb")
        except FileNotFoundError as exc:
            raise BlobMissingError(f"blob {blob_id} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot open blob {blob_id}: {exc}") from exc

    def exists(self, blob_id: str) -> bool:
        return self.path_of(blob_id).is_file()

    def delete(self, blob_id: str) -> int:
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

    def stored(self) -> Iterator[StoredBlob]:
        """Files named by a blob id in that id's directory; temp and stray files are skipped."""
        for path in self._files():
            if is_blob_id(path.name) and path.parent == self.path_of(path.name).parent:
                yield from self._entry(path, path.name)

    def unfinished(self) -> Iterator[StoredBlob]:
        for path in self._files():
            if path.name.startswith(TEMP_PREFIX):
                yield from self._entry(path, path.relative_to(self.root).as_posix())

    def discard_unfinished(self, name: str) -> int:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts \
                or not relative.name.startswith(TEMP_PREFIX):
            raise ValueError(f"not a temp file of this directory: {name!r}")
        path = self.root / relative
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"cannot delete temp file {path}: {exc}") from exc
        return size

    def bytes_stored(self) -> int:
        """Bytes taken by everything under the root, unfinished temp files included."""
        total = 0
        for path in self._files():
            try:
                total += path.lstat().st_size
            except FileNotFoundError:
                continue  # deleted while we walked
        return total

    def close(self) -> None:
        pass

    def _files(self) -> Iterator[Path]:
        for directory, _subdirs, names in os.walk(self.root):
            for name in names:
                yield Path(directory) / name

    @staticmethod
    def _entry(path: Path, name: str) -> Iterator[StoredBlob]:
        try:
            status = path.lstat()
        except FileNotFoundError:
            return  # deleted while we walked
        yield StoredBlob(name, status.st_size, status.st_mtime)


class _TempFileUpload:
    """A temp file next to the final name; commit: flush, fsync, rename, fsync the directory."""

    def __init__(
        self, blob_id: str, final: Path, fsync: Fsync,
        wrap_temp_file: Callable[[BinaryIO], BinaryIO] | None,
    ):
        self._blob_id = blob_id
        self._final = final
        self._fsync = fsync
        with _storage_errors(blob_id):
            make_directories(final.parent, fsync)
            descriptor, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=final.parent)
            self._file = os.fdopen(descriptor, "wb")
        self._temp = Path(temp_name)
        self._written = self._temp  # what abandon() must remove
        self._out = wrap_temp_file(self._file) if wrap_temp_file else self._file

    def write(self, sealed: bytes) -> None:
        with _storage_errors(self._blob_id):
            self._out.write(sealed)

    def commit(self) -> None:
        with _storage_errors(self._blob_id):
            self._out.flush()
            self._fsync(self._file.fileno())
            self._file.close()
            os.rename(self._temp, self._final)
            self._written = self._final  # from here a failure must remove the renamed file
            fsync_directory(self._final.parent, self._fsync)

    def abandon(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # its buffer could not be flushed: the file goes anyway
        try:
            self._written.unlink(missing_ok=True)
        except OSError:
            pass  # left for the sweep: a temp file, or an orphan blob


@contextmanager
def _storage_errors(blob_id: str) -> Iterator[None]:
    """An OSError becomes StorageError, kept as its cause (so ENOSPC is still told)."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"cannot store blob {blob_id}: {exc}") from exc
