"""The blob readers' shared position, seek and reads (gateway/store/blob_backends/positioned.py)
behave as io.BytesIO over the same bytes: a reader that reads short and in pieces, as
PostgreSQL's chunk rows do (behind a BufferedReader, as `open(sequential=True)` puts them), and
the plaintext view's file, through which pyzipper reads a ZIP where it lies."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from gateway.store.blob_backends.positioned import PositionedReader
from gateway.store.blobs import BlobStore

DATA = os.urandom(1000)
# (operation, arguments): every seek is followed by a tell and a read in the comparison.
STEPS = [
    ("read", 10), ("seek", 5, io.SEEK_SET), ("read", 300), ("seek", -2, io.SEEK_CUR),
    ("read", 1), ("seek", -100, io.SEEK_END), ("read", 7), ("seek", -5000, io.SEEK_END),
    ("read", 3), ("seek", -9, io.SEEK_CUR), ("read", 0), ("seek", 10, io.SEEK_END),
    ("read", 4), ("seek", 998, io.SEEK_SET), ("read", 50), ("seek", 0, io.SEEK_SET),
    ("read", -1), ("seek", 123, io.SEEK_SET), ("read", None),
]


class ShortPieces(PositionedReader):
    """`data` read at most `most` bytes at a time, handed out in pieces of `piece` bytes."""

    def __init__(self, data: bytes, most: int = 64, piece: int = 16):
        super().__init__()
        self._data, self._most, self._piece = data, most, piece

    def _size(self) -> int:
        return len(self._data)

    def _read_at(self, offset: int, size: int) -> list[bytes]:
        stop = min(len(self._data), offset + (self._most if size < 0 else min(size, self._most)))
        return [self._data[at:min(at + self._piece, stop)]
                for at in range(offset, stop, self._piece)]


def trace(file, steps=STEPS) -> list:
    """What each step returns, then where the file stands."""
    seen = []
    for name, *arguments in steps:
        seen += [getattr(file, name)(*arguments), file.tell()]
    return seen


def view_file(tmp_path: Path, data: bytes):
    store = BlobStore(tmp_path / "blobs", bytes(32), chunk_size=128)
    info = store.write([data])
    return store.view(info.blob_id, info.wrapped_key)


def test_a_short_reading_source_behind_a_buffer_reads_and_seeks_as_bytesio() -> None:
    assert trace(io.BufferedReader(ShortPieces(DATA), 100)) == trace(io.BytesIO(DATA))


def test_a_short_read_advances_the_position_by_what_it_gave() -> None:
    raw = ShortPieces(DATA, most=64)
    buffer = bytearray(100)
    assert raw.readinto(buffer) == 64 and bytes(buffer[:64]) == DATA[:64]
    assert raw.tell() == 64
    assert raw.readall() == DATA[64:]


def test_the_views_file_reads_and_seeks_as_bytesio(tmp_path: Path) -> None:
    with view_file(tmp_path, DATA) as view:
        assert trace(view.file()) == trace(io.BytesIO(DATA))


@pytest.mark.parametrize("file", [
    lambda: ShortPieces(DATA), lambda: io.BufferedReader(ShortPieces(DATA)), lambda: io.BytesIO(DATA),
])
def test_an_absolute_seek_before_the_start_is_refused(file) -> None:
    with pytest.raises(ValueError, match="negative seek"):
        file().seek(-1)


def test_a_file_shorter_than_a_zip_end_record_is_not_a_zip_rather_than_an_error(
    tmp_path: Path,
) -> None:
    """zipfile seeks 22 bytes back from the end and expects a short file to let it."""
    with view_file(tmp_path, b"PK\x05\x06") as view, pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(view.file())


def test_a_closed_reader_refuses_to_read_and_seek() -> None:
    raw = ShortPieces(DATA)
    raw.close()
    for call in (raw.read, raw.tell, lambda: raw.seek(0)):
        with pytest.raises(ValueError, match="closed"):
            call()
