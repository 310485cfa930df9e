"""What BlobStore does on any blob backend: the tests tests/unit/test_store_blobs.py runs on a
local directory and tests/e2e/test_store_blobs_postgresql.py on PostgreSQL chunk rows.

A test module runs them with a subclass of BlobStoreContract that provides two fixtures:
`new_store` (a factory: chunk size → BlobStore on one empty backend) and `at_rest` (an AtRest
for the backend of `store`: the sealed bytes where they lie, to look at them or to tamper with
them as someone with the disk or the database could). Tests about one backend's own medium
(paths, fsync, a full disk) stay in that backend's module.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc
import warnings
from typing import Callable, Iterator, Protocol

import pytest

from gateway.store.blobs import (
    BlobIntegrityError,
    BlobMissingError,
    BlobReader,
    BlobStore,
    BlobView,
)
from gateway.store.crypto import DEFAULT_CHUNK_SIZE

MASTER = bytes(range(32))
CHUNK = 1024

NewStore = Callable[[int], BlobStore]


class AtRest(Protocol):
    def sealed(self, blob_id: str) -> bytes:
        """The blob's bytes as stored (header and sealed chunks)."""

    def replace(self, blob_id: str, sealed: bytes) -> None:
        """Store other bytes under the blob's id, as an attacker could."""

    def everything(self) -> list[str]:
        """A name for each thing stored, blobs and unfinished writes alike."""


def read_all(reader: BlobReader) -> bytes:
    with reader:
        return b"".join(reader)


class BlobStoreContract:
    @pytest.fixture
    def store(self, new_store: NewStore) -> BlobStore:
        return new_store(CHUNK)

    @pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK])
    def test_written_blob_reads_back_with_its_size_and_digest(
        self, store: BlobStore, size: int,
    ) -> None:
        data = os.urandom(size)
        info = store.write(data[i : i + 300] for i in range(0, size, 300))
        assert info.size == size
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert read_all(store.open(info.blob_id, info.wrapped_key)) == data

    def test_stored_bytes_hold_neither_plaintext_nor_wrapped_key(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        data = b"Confidential: merger terms " * 100
        info = store.write([data])
        on_disk = at_rest.sealed(info.blob_id)
        assert b"Confidential" not in on_disk
        assert info.wrapped_key not in on_disk

    def test_open_streams_one_chunk_at_a_time(self, store: BlobStore) -> None:
        info = store.write([os.urandom(5 * CHUNK + 10)])
        with store.open(info.blob_id, info.wrapped_key) as reader:
            sizes = [len(chunk) for chunk in reader]
        assert sizes == [CHUNK] * 5 + [10]

    def test_tampered_blob_at_rest_raises_integrity_error_after_the_good_chunks(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        data = os.urandom(3 * CHUNK)
        info = store.write([data])
        raw = bytearray(at_rest.sealed(info.blob_id))
        raw[-20] ^= 0xFF  # inside the last chunk
        at_rest.replace(info.blob_id, bytes(raw))
        yielded: list[bytes] = []
        with pytest.raises(BlobIntegrityError):
            for chunk in store.open(info.blob_id, info.wrapped_key):
                yielded.append(chunk)
        assert b"".join(yielded) == data[: 2 * CHUNK]

    def test_missing_blob_raises_blob_missing_error(self, store: BlobStore) -> None:
        with pytest.raises(BlobMissingError):
            store.open("0" * 32, b"whatever")

    @pytest.mark.parametrize("bad_id", ["../../etc/passwd", "ABCDEF" * 6, "0" * 31, ""])
    def test_malformed_blob_id_never_becomes_a_path(self, store: BlobStore, bad_id: str) -> None:
        with pytest.raises(ValueError):
            store.open(bad_id, b"")
        with pytest.raises(ValueError):
            store.delete(bad_id)

    def test_unread_reader_closes_its_file_without_a_resource_warning(
        self, store: BlobStore,
    ) -> None:
        info = store.write([b"data"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reader = store.open(info.blob_id, info.wrapped_key)
            del reader
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []

    def test_failing_source_leaves_nothing_stored_and_keeps_its_error(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        def source() -> Iterator[bytes]:
            yield os.urandom(3 * CHUNK)
            raise ValueError("upstream broke")

        with pytest.raises(ValueError, match="upstream broke"):
            store.write(source())
        assert at_rest.everything() == []

    def test_delete_reports_bytes_freed_then_zero(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        info = store.write([os.urandom(2 * CHUNK)])
        on_disk = len(at_rest.sealed(info.blob_id))
        assert store.exists(info.blob_id)
        assert store.delete(info.blob_id) == on_disk
        assert not store.exists(info.blob_id)
        assert store.delete(info.blob_id) == 0
        with pytest.raises(BlobMissingError):
            store.open(info.blob_id, info.wrapped_key)

    def test_bytes_on_disk_counts_every_blob_stored(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        assert store.bytes_on_disk() == 0
        infos = [store.write([os.urandom(n)]) for n in (0, 10, 3 * CHUNK)]
        expected = sum(len(at_rest.sealed(i.blob_id)) for i in infos)
        assert store.bytes_on_disk() == expected
        freed = store.delete(infos[2].blob_id)
        assert freed > 3 * CHUNK
        assert store.bytes_on_disk() == expected - freed

    def test_50_mb_blob_is_written_and_read_back_with_bounded_memory(
        self, new_store: NewStore,
    ) -> None:
        store = new_store(DEFAULT_CHUNK_SIZE)
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

    # -- read in place (BlobView): a ZIP is opened where it lies -----------------------------

    @pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
    def test_view_slices_finds_and_reads_exactly_as_bytes_do(
        self, store: BlobStore, size: int,
    ) -> None:
        data = os.urandom(size) + b"PK\x05\x06" + os.urandom(size // 3) + b"PK\x05\x06"
        info = store.write([data])
        bounds = [None, 0, 1, -1, 3, -5, CHUNK - 2, CHUNK, CHUNK + 3, len(data), len(data) + 9,
                  -len(data) - 9]
        marker = b"PK\x05\x06"
        with store.view(info.blob_id, info.wrapped_key) as view:
            assert len(view) == len(data)
            for start in bounds:
                for stop in bounds:
                    assert view[start:stop] == data[start:stop], (start, stop)
                    assert view.find(marker, start or 0, stop) == data.find(marker, start or 0, stop)
                    assert view.rfind(marker, start or 0, stop) == data.rfind(marker, start or 0, stop)
            assert view[-1] == data[-1]
            file = view.file()
            file.seek(-7, os.SEEK_END)
            assert file.read() == data[-7:]

    def test_view_keeps_only_a_few_chunks_of_a_large_blob(self, new_store: NewStore) -> None:
        store = new_store(64 * 1024)
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

    def test_view_of_a_truncated_blob_fails_on_its_last_chunk_not_before(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        info = store.write([b"a" * (3 * CHUNK)])
        sealed = at_rest.sealed(info.blob_id)
        at_rest.replace(info.blob_id, sealed[: len(sealed) - (CHUNK + 16)])  # last chunk cut off
        with store.view(info.blob_id, info.wrapped_key) as view:
            assert view[:CHUNK] == b"a" * CHUNK  # chunk 0 is authentic as chunk 0
            with pytest.raises(BlobIntegrityError):
                view[-10:]  # chunk 1 was sealed as "not the last": the cut shows

    def test_view_of_a_tampered_chunk_releases_nothing_of_it(
        self, store: BlobStore, at_rest: AtRest,
    ) -> None:
        info = store.write([b"b" * (2 * CHUNK)])
        sealed = bytearray(at_rest.sealed(info.blob_id))
        sealed[-20] ^= 1
        at_rest.replace(info.blob_id, bytes(sealed))
        with store.view(info.blob_id, info.wrapped_key) as view:
            with pytest.raises(BlobIntegrityError):
                view.find(b"x")
