"""BlobStore: durable encrypted writes, streaming reads, failure cleanup, housekeeping."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import stat
import tracemalloc
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pytest

from gateway.store.blobs import (
    BlobIntegrityError,
    BlobMissingError,
    BlobReader,
    BlobStore,
    BlobView,
    StorageError,
)

MASTER = bytes(range(32))
CHUNK = 1024


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", MASTER, chunk_size=CHUNK)


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def read_all(reader: BlobReader) -> bytes:
    with reader:
        return b"".join(reader)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK])
def test_written_blob_reads_back_with_its_size_and_digest(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    info = store.write(data[i : i + 300] for i in range(0, size, 300))
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(store.open(info.blob_id, info.wrapped_key)) == data


def test_blob_lives_at_a_path_derived_from_its_random_id_only(store: BlobStore) -> None:
    info = store.write([b"report.pdf contents"])
    assert len(info.blob_id) == 32 and int(info.blob_id, 16) >= 0
    expected = store.root / info.blob_id[:2] / info.blob_id[2:4] / info.blob_id
    assert all_files(store.root) == [expected]
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert store.write([b"x"]).blob_id != info.blob_id


def test_blob_file_holds_neither_plaintext_nor_wrapped_key(store: BlobStore) -> None:
    data = b"Confidential: merger terms " * 100
    info = store.write([data])
    on_disk = store.path_of(info.blob_id).read_bytes()
    assert b"Confidential" not in on_disk
    assert info.wrapped_key not in on_disk


def test_open_streams_one_chunk_at_a_time(store: BlobStore) -> None:
    info = store.write([os.urandom(5 * CHUNK + 10)])
    with store.open(info.blob_id, info.wrapped_key) as reader:
        sizes = [len(chunk) for chunk in reader]
    assert sizes == [CHUNK] * 5 + [10]


def test_tampered_blob_on_disk_raises_integrity_error_after_the_good_chunks(
    store: BlobStore,
) -> None:
    data = os.urandom(3 * CHUNK)
    info = store.write([data])
    path = store.path_of(info.blob_id)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF  # inside the last chunk
    path.write_bytes(bytes(raw))
    yielded: list[bytes] = []
    with pytest.raises(BlobIntegrityError):
        for chunk in store.open(info.blob_id, info.wrapped_key):
            yielded.append(chunk)
    assert b"".join(yielded) == data[: 2 * CHUNK]


def test_missing_blob_raises_blob_missing_error(store: BlobStore) -> None:
    with pytest.raises(BlobMissingError):
        store.open("0" * 32, b"whatever")


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "ABCDEF" * 6, "0" * 31, ""])
def test_malformed_blob_id_never_becomes_a_path(store: BlobStore, bad_id: str) -> None:
    with pytest.raises(ValueError):
        store.open(bad_id, b"")
    with pytest.raises(ValueError):
        store.delete(bad_id)


def test_unread_reader_closes_its_file_without_a_resource_warning(store: BlobStore) -> None:
    info = store.write([b"data"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = store.open(info.blob_id, info.wrapped_key)
        del reader
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


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


def test_failing_source_removes_the_temp_file_and_keeps_its_error(store: BlobStore) -> None:
    def source() -> Iterator[bytes]:
        yield os.urandom(3 * CHUNK)
        raise ValueError("upstream broke")

    with pytest.raises(ValueError, match="upstream broke"):
        store.write(source())
    assert all_files(store.root) == []


def test_unwritable_root_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blobs"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(StorageError):
        BlobStore(blocker, MASTER).write([b"x"])


def test_delete_reports_bytes_freed_then_zero(store: BlobStore) -> None:
    info = store.write([os.urandom(2 * CHUNK)])
    on_disk = store.path_of(info.blob_id).stat().st_size
    assert store.exists(info.blob_id)
    assert store.delete(info.blob_id) == on_disk
    assert not store.exists(info.blob_id)
    assert store.delete(info.blob_id) == 0
    with pytest.raises(BlobMissingError):
        store.open(info.blob_id, info.wrapped_key)


def test_iter_blob_ids_lists_blobs_and_skips_temp_and_stray_files(store: BlobStore) -> None:
    ids = {store.write([b"a"]).blob_id, store.write([b"b"]).blob_id}
    some_id = next(iter(ids))
    directory = store.path_of(some_id).parent
    (directory / ".tmp-leftover").write_bytes(b"partial")
    (store.root / ("e" * 32)).write_bytes(b"misplaced")  # a valid id in the wrong place
    assert set(store.iter_blob_ids()) == ids


def test_bytes_on_disk_counts_every_file_under_the_root(store: BlobStore) -> None:
    assert store.bytes_on_disk() == 0
    infos = [store.write([os.urandom(n)]) for n in (0, 10, 3 * CHUNK)]
    expected = sum(store.path_of(i.blob_id).stat().st_size for i in infos)
    assert store.bytes_on_disk() == expected
    freed = store.delete(infos[2].blob_id)
    assert freed > 3 * CHUNK
    assert store.bytes_on_disk() == expected - freed


def test_50_mb_blob_is_written_and_read_back_with_bounded_memory(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", MASTER)
    piece = os.urandom(1024 * 1024)
    tracemalloc.start()
    try:
        info = store.write(piece for _ in range(50))
        _current, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        with store.open(info.blob_id, info.wrapped_key) as reader:
            for chunk in reader:
                digest.update(chunk)
        _current, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == 50 * 1024 * 1024
    assert digest.hexdigest() == info.sha256 == hashlib.sha256(piece * 50).hexdigest()
    assert write_peak < 4 * 1024 * 1024
    assert read_peak < 4 * 1024 * 1024


# -- read in place (BlobView): a ZIP is opened where it lies ---------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
def test_view_slices_finds_and_reads_exactly_as_bytes_do(store: BlobStore, size: int) -> None:
    data = os.urandom(size) + b"PK\x05\x06" + os.urandom(size // 3) + b"PK\x05\x06"
    info = store.write([data])
    bounds = [None, 0, 1, -1, 3, -5, CHUNK - 2, CHUNK, CHUNK + 3, len(data), len(data) + 9, -len(data) - 9]
    with store.view(info.blob_id, info.wrapped_key) as view:
        assert len(view) == len(data)
        for start in bounds:
            for stop in bounds:
                assert view[start:stop] == data[start:stop], (start, stop)
                assert view.find(b"PK\x05\x06", start or 0, stop) == data.find(b"PK\x05\x06", start or 0, stop)
                assert view.rfind(b"PK\x05\x06", start or 0, stop) == data.rfind(b"PK\x05\x06", start or 0, stop)
        assert view[-1] == data[-1]
        file = view.file()
        file.seek(-7, os.SEEK_END)
        assert file.read() == data[-7:]


def test_view_keeps_only_a_few_chunks_of_a_large_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", MASTER, chunk_size=64 * 1024)
    info = store.write(os.urandom(64 * 1024) for _ in range(160))  # 10 MiB
    with store.view(info.blob_id, info.wrapped_key) as view:
        tracemalloc.start()
        try:
            for start in range(0, len(view), 100_000):
                view[start:start + 4096]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # the cached chunks, the one coming in (sealed, then opened) and one being sliced
    assert peak < (BlobView.CACHED_CHUNKS + 3) * 64 * 1024


def test_view_of_a_truncated_blob_fails_on_its_last_chunk_not_before(store: BlobStore) -> None:
    info = store.write([b"a" * (3 * CHUNK)])
    path = store.path_of(info.blob_id)
    sealed = path.read_bytes()
    path.write_bytes(sealed[: len(sealed) - (CHUNK + 16)])  # the last chunk cut off
    with store.view(info.blob_id, info.wrapped_key) as view:
        assert view[:CHUNK] == b"a" * CHUNK  # chunk 0 is authentic as chunk 0
        with pytest.raises(BlobIntegrityError):
            view[-10:]  # chunk 1 was sealed as "not the last": the cut shows


def test_view_of_a_tampered_chunk_releases_nothing_of_it(store: BlobStore) -> None:
    info = store.write([b"b" * (2 * CHUNK)])
    path = store.path_of(info.blob_id)
    sealed = bytearray(path.read_bytes())
    sealed[-20] ^= 1
    path.write_bytes(bytes(sealed))
    with store.view(info.blob_id, info.wrapped_key) as view:
        with pytest.raises(BlobIntegrityError):
            view.find(b"x")
