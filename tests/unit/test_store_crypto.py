"""Chunked blob AEAD, small-secret sealing, and the master key file."""

from __future__ import annotations

import base64
import io
import os
import secrets
import stat
import threading
import tracemalloc
from pathlib import Path

import pytest

from gateway.store.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    BlobEncryptor,
    BlobIntegrityError,
    IntegrityError,
    decrypt_blob,
    open_small,
    seal_small,
)
from gateway.store.keys import MasterKeyError, load_or_create_master_key

CHUNK = 64
MASTER = bytes(range(32))
BLOB_ID = "0123456789abcdef0123456789abcdef"


def seal(data: bytes, piece: int = 7, chunk: int = CHUNK, blob_id: str = BLOB_ID):
    """Encrypt `data` fed in `piece`-sized bits; return (wrapped key, header, sealed chunks)."""
    encryptor = BlobEncryptor(MASTER, blob_id, chunk)
    sealed: list[bytes] = []
    for start in range(0, len(data), piece):
        sealed += encryptor.update(data[start : start + piece])
    sealed.append(encryptor.finish())
    return encryptor.wrapped_key, encryptor.header, sealed


def read_back(
    wrapped: bytes, blob: bytes, blob_id: str = BLOB_ID
) -> tuple[list[bytes], Exception | None]:
    """Plaintext chunks yielded before decryption stopped, and the error that stopped it."""
    yielded: list[bytes] = []
    try:
        for chunk in decrypt_blob(MASTER, blob_id, wrapped, io.BytesIO(blob)):
            yielded.append(chunk)
    except BlobIntegrityError as exc:
        return yielded, exc
    return yielded, None


def plain_chunks(data: bytes, chunk: int = CHUNK) -> list[bytes]:
    return [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 3])
@pytest.mark.parametrize("piece", [1, 13, CHUNK, 1000])
def test_round_trip_restores_every_size_whatever_the_feed_size(size: int, piece: int) -> None:
    data = os.urandom(size)
    wrapped, header, sealed = seal(data, piece)
    yielded, error = read_back(wrapped, header + b"".join(sealed))
    assert error is None
    assert yielded == plain_chunks(data)


@pytest.mark.parametrize(
    "size, chunk_count", [(0, 1), (1, 1), (CHUNK, 1), (CHUNK + 1, 2), (5 * CHUNK, 5)]
)
def test_blob_is_header_plus_one_sealed_chunk_per_plaintext_chunk(
    size: int, chunk_count: int
) -> None:
    _wrapped, header, sealed = seal(os.urandom(size))
    assert len(header) == HEADER_SIZE
    assert len(sealed) == chunk_count
    assert sum(len(s) for s in sealed) == size + chunk_count * TAG_SIZE


def test_same_plaintext_seals_differently_each_time() -> None:
    data = b"A" * 3 * CHUNK
    first, second = seal(data), seal(data)
    assert first[0] != second[0] and first[1] != second[1] and first[2] != second[2]


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    data = b"confidential quarterly numbers " * 20
    _wrapped, header, sealed = seal(data)
    assert b"confidential" not in header + b"".join(sealed)


FIVE_FULL = os.urandom(5 * CHUNK)  # exactly five full chunks


@pytest.mark.parametrize("chunk_index", range(5))
@pytest.mark.parametrize("offset", [0, CHUNK // 2, CHUNK + TAG_SIZE - 1])  # data, data, tag
def test_flipped_byte_in_any_chunk_stops_before_that_chunk(chunk_index: int, offset: int) -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    bad = bytearray(sealed[chunk_index])
    bad[offset] ^= 0x01
    sealed[chunk_index] = bytes(bad)
    yielded, error = read_back(wrapped, header + b"".join(sealed))
    assert error is not None
    assert yielded == plain_chunks(FIVE_FULL)[:chunk_index]


def test_swapped_chunks_stop_at_the_first_one_out_of_place() -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    sealed[1], sealed[2] = sealed[2], sealed[1]
    yielded, error = read_back(wrapped, header + b"".join(sealed))
    assert error is not None
    assert yielded == plain_chunks(FIVE_FULL)[:1]


@pytest.mark.parametrize("data", [FIVE_FULL, FIVE_FULL + b"tail"])
def test_dropped_last_chunk_is_detected(data: bytes) -> None:
    wrapped, header, sealed = seal(data)
    yielded, error = read_back(wrapped, header + b"".join(sealed[:-1]))
    assert error is not None
    assert yielded == plain_chunks(data)[: len(sealed) - 2]


def test_empty_blob_without_its_only_chunk_is_detected() -> None:
    wrapped, header, _sealed = seal(b"")
    yielded, error = read_back(wrapped, header)
    assert error is not None and yielded == []


def test_appended_chunk_is_detected_before_the_old_last_chunk_is_released() -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    yielded, error = read_back(wrapped, header + b"".join(sealed) + sealed[2])
    assert error is not None
    assert yielded == plain_chunks(FIVE_FULL)[:4]


@pytest.mark.parametrize("extra", [b"\x00", b"x" * (CHUNK + TAG_SIZE)])
def test_bytes_appended_after_a_short_last_chunk_are_detected(extra: bytes) -> None:
    data = FIVE_FULL + b"tail"
    wrapped, header, sealed = seal(data)
    yielded, error = read_back(wrapped, header + b"".join(sealed) + extra)
    assert error is not None
    assert yielded == plain_chunks(data)[:5]


def test_truncation_inside_a_chunk_is_detected() -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    blob = header + b"".join(sealed)
    yielded, error = read_back(wrapped, blob[:-5])
    assert error is not None
    assert yielded == plain_chunks(FIVE_FULL)[:4]


@pytest.mark.parametrize("position", range(HEADER_SIZE))
def test_any_changed_header_byte_releases_nothing(position: int) -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    bad = bytearray(header)
    bad[position] ^= 0x80
    yielded, error = read_back(wrapped, bytes(bad) + b"".join(sealed))
    assert error is not None
    assert yielded == []


def test_header_declaring_a_huge_chunk_is_refused_without_allocating_it() -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    bad = header[:5] + (2**32 - 1).to_bytes(4, "big") + header[9:]
    yielded, error = read_back(wrapped, bad + b"".join(sealed))
    assert isinstance(error, BlobIntegrityError) and yielded == []


@pytest.mark.parametrize("blob", [b"", b"PPGB"])
def test_empty_or_headless_file_is_an_integrity_error(blob: bytes) -> None:
    wrapped, _header, _sealed = seal(b"x")
    yielded, error = read_back(wrapped, blob)
    assert error is not None and yielded == []


def test_wrapped_key_of_another_blob_is_refused() -> None:
    _wrapped, header, sealed = seal(FIVE_FULL)
    other_wrapped, _h, _s = seal(FIVE_FULL)
    yielded, error = read_back(other_wrapped, header + b"".join(sealed))
    assert error is not None and yielded == []


@pytest.mark.parametrize("position", [0, 5, 30, -1])
def test_altered_wrapped_key_is_refused(position: int) -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    bad = bytearray(wrapped)
    bad[position] ^= 0x01
    yielded, error = read_back(bytes(bad), header + b"".join(sealed))
    assert error is not None and yielded == []


def test_wrong_blob_id_is_refused() -> None:
    wrapped, header, sealed = seal(FIVE_FULL)
    other_id = "f" * 32
    yielded, error = read_back(wrapped, header + b"".join(sealed), blob_id=other_id)
    assert error is not None and yielded == []


def test_wrong_master_key_is_refused() -> None:
    wrapped, header, sealed = seal(b"hello")
    source = io.BytesIO(header + b"".join(sealed))
    with pytest.raises(BlobIntegrityError):
        next(decrypt_blob(bytes(32), BLOB_ID, wrapped, source))


def test_short_master_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        BlobEncryptor(b"short", BLOB_ID)


def test_encrypting_50_mb_in_1_mib_pieces_keeps_memory_far_below_the_data_size() -> None:
    piece = os.urandom(1024 * 1024)
    encryptor = BlobEncryptor(MASTER, BLOB_ID)
    sealed_bytes = 0
    tracemalloc.start()
    try:
        for _ in range(50):
            for sealed in encryptor.update(piece):
                sealed_bytes += len(sealed)
        sealed_bytes += len(encryptor.finish())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sealed_bytes == 50 * 1024 * 1024 + 800 * TAG_SIZE
    assert peak < 4 * 1024 * 1024


# -- small secrets ---------------------------------------------------------------------


def test_small_secret_round_trips() -> None:
    sealed = seal_small(MASTER, b"transfer:t1", "パスワード".encode())
    assert "パスワード".encode() not in sealed
    assert open_small(MASTER, b"transfer:t1", sealed).decode() == "パスワード"


@pytest.mark.parametrize(
    "master, aad, mutate",
    [
        (MASTER, b"transfer:t2", lambda s: s),  # other transfer
        (bytes(32), b"transfer:t1", lambda s: s),  # other master key
        (MASTER, b"transfer:t1", lambda s: s[:-1] + bytes([s[-1] ^ 1])),  # altered tag
        (MASTER, b"transfer:t1", lambda s: s[:10]),  # truncated
        (MASTER, b"transfer:t1", lambda s: b"\x02" + s[1:]),  # unknown version
    ],
)
def test_small_secret_refuses_any_mismatch(master: bytes, aad: bytes, mutate) -> None:
    sealed = seal_small(MASTER, b"transfer:t1", b"secret")
    with pytest.raises(IntegrityError):
        open_small(master, aad, mutate(sealed))


def test_small_secret_cannot_be_opened_as_a_wrapped_blob_key() -> None:
    key_like = seal_small(MASTER, BLOB_ID.encode(), os.urandom(32))
    _w, header, sealed = seal(b"data")
    yielded, error = read_back(key_like, header + b"".join(sealed))
    assert error is not None and yielded == []


# -- master key ------------------------------------------------------------------------


def test_master_key_file_is_created_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = load_or_create_master_key(path, None)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert base64.b64decode(path.read_text().strip()) == key
    assert os.listdir(path.parent) == ["master.key"]  # no temp file left behind


def test_master_key_file_is_reused_on_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    assert load_or_create_master_key(path, None) == load_or_create_master_key(path, None)


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create_master_key(path, None))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_environment_key_wins_and_no_file_is_created(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    path = tmp_path / "master.key"
    assert load_or_create_master_key(path, base64.b64encode(key).decode()) == key
    assert not path.exists()


@pytest.mark.parametrize(
    "env_value, problem",
    [("not base64!", "not valid base64"), (base64.b64encode(b"x" * 16).decode(), "32 bytes")],
)
def test_bad_environment_key_is_refused(tmp_path: Path, env_value: str, problem: str) -> None:
    with pytest.raises(MasterKeyError, match=problem):
        load_or_create_master_key(tmp_path / "master.key", env_value)


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path, None)
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="must be mode 0600") as caught:
        load_or_create_master_key(path, None)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"%%%%\n", "not valid base64"),
        (b"\xff\xfe\n", "not valid base64"),
        (base64.b64encode(b"k" * 31) + b"\n", "32 bytes, got 31"),
        (b"A" * 5000, "too large"),
    ],
)
def test_malformed_key_file_is_refused_naming_path_and_problem(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match=problem) as caught:
        load_or_create_master_key(path, None)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_directory_in_place_of_the_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.mkdir(mode=0o700)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        load_or_create_master_key(path, None)


def test_key_file_in_an_uncreatable_place_is_a_master_key_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MasterKeyError, match="cannot create"):
        load_or_create_master_key(blocker / "master.key", None)
