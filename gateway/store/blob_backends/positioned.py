"""A read-only, seekable raw file over something read by offset: the position, seek, tell and
reads that the blob readers share (postgres.py's chunk rows, blobs.py's plaintext view). A
reader says how big it is and how it reads the bytes at an offset; nothing else.

Seeking follows io.BytesIO: an absolute seek before the start is a ValueError, a relative one
lands at the start (zipfile seeks back from the end of a file that may be shorter than a ZIP's
end record, and expects no error from that), and past the end reads return b"".
"""

from __future__ import annotations

import io
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any


class PositionedReader(io.RawIOBase):
    def __init__(self) -> None:
        super().__init__()
        self._position = 0

    @abstractmethod
    def _size(self) -> int:
        """The file's length in bytes."""

    @abstractmethod
    def _read_at(self, offset: int, size: int) -> Iterable[bytes]:
        """The bytes from `offset` on, up to `size` of them (as many as one read gives if
        `size` is negative), as the pieces they lie in; fewer (a short read) or none at the end."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET and offset < 0:
            raise ValueError("negative seek position")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size()}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        pieces = self._next_pieces(-1 if size is None else size)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        """Copies each piece into `buffer` (a BufferedReader's): nothing joined first."""
        filled = 0
        for piece in self._next_pieces(len(buffer)):
            buffer[filled:filled + len(piece)] = piece
            filled += len(piece)
        return filled

    def readall(self) -> bytes:
        return b"".join(iter(self.read, b""))

    def _next_pieces(self, size: int) -> list[bytes]:
        self._checkClosed()
        pieces = list(self._read_at(self._position, size)) if size else []
        self._position += sum(map(len, pieces))
        return pieces
