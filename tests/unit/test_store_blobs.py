"""BlobStore on a local directory: the behaviour every backend shares (tests/support/
blob_contract.py), then what is the directory's own: paths, fsync, a full disk, stray files."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

import pytest

from gateway.store.blob_backends.directory import LocalDirectoryBackend
from gateway.store.blobs import BlobStore, StorageError
from tests.support.blob_contract import CHUNK, MASTER, BlobStoreContract, NewStore


@pytest.fixture
def new_store(tmp_path: Path) -> NewStore:
    return lambda chunk_size: BlobStore(LocalDirectoryBackend(tmp_path / "blobs"), MASTER,
                                        chunk_size=chunk_size)


@pytest.fixture
def store(new_store: NewStore) -> BlobStore:
    return new_store(CHUNK)


class FilesAtRest:
    """The sealed bytes of a local directory: one file per blob."""

    def __init__(self, store: BlobStore):
        self._store = store

    def sealed(self, blob_id: str) -> bytes:
        return self._store.path_of(blob_id).read_bytes()

    def replace(self, blob_id: str, sealed: bytes) -> None:
        self._store.path_of(blob_id).write_bytes(sealed)

    def everything(self) -> list[str]:
        return [str(p) for p in all_files(self._store.root)]


@pytest.fixture
def at_rest(store: BlobStore) -> FilesAtRest:
    return FilesAtRest(store)


class TestOnALocalDirectory(BlobStoreContract):
    pass


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_blob_lives_at_a_path_derived_from_its_random_id_only(store: BlobStore) -> None:
    info = store.write([b"report.pdf contents"])
    assert len(info.blob_id) == 32 and int(info.blob_id, 16) >= 0
    expected = store.root / info.blob_id[:2] / info.blob_id[2:4] / info.blob_id
    assert all_files(store.root) == [expected]
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert store.write([b"x"]).blob_id != info.blob_id


def fsync_failing_for(should_fail: Callable[[int], bool]) -> Callable[[int], None]:
    def fsync(fd: int) -> None:
        if should_fail(fd):
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    return fsync


def is_regular_file(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def is_directory_holding_a_blob(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode) and any(
        len(name) == 32 and not name.startswith(".") for name in os.listdir(fd)
    )


def test_failed_file_fsync_raises_storage_error_and_leaves_no_file(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = BlobStore(root, MASTER, chunk_size=CHUNK, fsync=fsync_failing_for(is_regular_file))
    with pytest.raises(StorageError) as caught:
        store.write([b"payload"])
    assert isinstance(caught.value.__cause__, OSError)
    assert all_files(root) == []


def test_failed_directory_fsync_after_rename_leaves_no_file(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    fsync = fsync_failing_for(is_directory_holding_a_blob)
    store = BlobStore(root, MASTER, chunk_size=CHUNK, fsync=fsync)
    with pytest.raises(StorageError):
        store.write([b"payload"])
    assert all_files(root) == []
    assert list(store.iter_blob_ids()) == []


class FullDisk:
    """A writer that accepts `room` bytes and then fails the way a full disk does."""

    def __init__(self, inner: BinaryIO, room: int):
        self._inner = inner
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._inner.write(data)

    def flush(self) -> None:
        self._inner.flush()


def test_disk_full_raises_storage_error_and_removes_the_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = BlobStore(root, MASTER, chunk_size=CHUNK, wrap_temp_file=lambda f: FullDisk(f, 3000))
    with pytest.raises(StorageError) as caught:
        store.write(os.urandom(CHUNK) for _ in range(10))
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert all_files(root) == []


def test_unwritable_root_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blobs"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(StorageError):
        BlobStore(blocker, MASTER).write([b"x"])


def test_iter_blob_ids_lists_blobs_and_skips_temp_and_stray_files(store: BlobStore) -> None:
    ids = {store.write([b"a"]).blob_id, store.write([b"b"]).blob_id}
    some_id = next(iter(ids))
    directory = store.path_of(some_id).parent
    (directory / ".tmp-leftover").write_bytes(b"partial")
    (store.root / ("e" * 32)).write_bytes(b"misplaced")  # a valid id in the wrong place
    assert set(store.iter_blob_ids()) == ids


def test_unfinished_lists_temp_files_and_only_those_can_be_discarded(store: BlobStore) -> None:
    blob_id = store.write([b"committed"]).blob_id
    temp = store.path_of(blob_id).parent / ".tmp-leftover"
    temp.write_bytes(b"partial")
    backend = store.backend
    [unfinished] = backend.unfinished()
    assert (unfinished.name, unfinished.size) == (f"{blob_id[:2]}/{blob_id[2:4]}/.tmp-leftover", 7)
    for outside in (f"{blob_id[:2]}/{blob_id[2:4]}/{blob_id}", "../.tmp-x", "/tmp/.tmp-x"):
        with pytest.raises(ValueError):
            backend.discard_unfinished(outside)
    assert backend.discard_unfinished(unfinished.name) == 7
    assert backend.discard_unfinished(unfinished.name) == 0
    assert not temp.exists() and store.exists(blob_id)
