"""Compare one table's rows on two stores: a canonical encoding of a row, a SHA-256 per table over
its rows in key order, and one walk of both sides in key order that names every row missing from
the target, differing, or gone from the source (gateway/ops/migrate_store.py).

The encoding is the same whichever engine a row comes from: each value, in the order of the
columns' names, is a type tag (N null, I integer, F real, T text, B bytes), its length as 8
bytes big-endian, then its bytes (an integer in decimal ASCII, text in UTF-8). A table's hash is
the SHA-256 of its rows' encodings one after another, in primary-key order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


def encode_row(values: Iterable[Any]) -> bytes:
    out = bytearray()
    for value in values:
        tag, payload = _encoded(value)
        out += tag + len(payload).to_bytes(8, "big") + payload
    return bytes(out)


def _encoded(value: Any) -> tuple[bytes, bytes]:
    if value is None:
        return b"N", b""
    if isinstance(value, bool):  # a boolean column is an integer 0/1 on SQLite
        value = int(value)
    if isinstance(value, int):
        return b"I", str(value).encode()
    if isinstance(value, float):
        return b"F", repr(value).encode()
    if isinstance(value, str):
        return b"T", value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"B", bytes(value)
    raise TypeError(f"no canonical encoding for a {type(value).__name__}")


def order_of(values: Iterable[Any]) -> tuple[tuple[int, Any], ...]:
    """A key as both engines order it: by type first as SQLite does (NULL, numbers, text,
    bytes), then text by code point, which is UTF-8 byte order (SQLite's BINARY, COLLATE "C")."""
    ranked = []
    for value in values:
        if value is None:
            ranked.append((0, 0))
        elif isinstance(value, (int, float)):
            ranked.append((1, value))
        elif isinstance(value, str):
            ranked.append((2, value))
        else:
            ranked.append((3, bytes(value)))
    return tuple(ranked)


@dataclass
class TableDigest:
    """Count and SHA-256 of a table's rows, fed in key order."""

    rows: int = 0
    _sha256: Any = field(default_factory=hashlib.sha256, repr=False)

    def add(self, encoded: bytes) -> None:
        self.rows += 1
        self._sha256.update(encoded)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TableDigest) and self.rows == other.rows
                and self.sha256 == other.sha256)


@dataclass(frozen=True)
class Change:
    """A row on which the two sides disagree: 'missing' (only the source has it), 'differs',
    or 'gone' (only the target has it). `row` is the source's (None when gone)."""

    kind: str
    key: tuple[Any, ...]
    row: tuple[Any, ...] | None


class OutOfOrder(Exception):
    """A side's rows did not come in key order: the engines order keys differently, and a walk
    would pair the wrong rows."""


def changes(
    source: Iterable[tuple[Any, ...]], target: Iterable[tuple[Any, ...]], *,
    key_positions: tuple[int, ...], unique: bool, source_digest: TableDigest,
    target_digest: TableDigest,
) -> Iterator[Change]:
    """Walk both sides' rows (each in key order) together; every row is fed to its side's
    digest, and every row not the same on both sides is yielded. `unique`: keys never repeat
    (a primary key); else equal keys may follow each other."""
    left = _walked(source, key_positions, unique, source_digest, "source")
    right = _walked(target, key_positions, unique, target_digest, "target")
    mine, theirs = next(left, None), next(right, None)
    while mine is not None or theirs is not None:
        if theirs is None or (mine is not None and mine[0] < theirs[0]):
            yield Change("missing", _key(mine[2], key_positions), mine[2])
            mine = next(left, None)
        elif mine is None or theirs[0] < mine[0]:
            yield Change("gone", _key(theirs[2], key_positions), None)
            theirs = next(right, None)
        else:
            if mine[1] != theirs[1]:
                yield Change("differs", _key(mine[2], key_positions), mine[2])
            mine, theirs = next(left, None), next(right, None)


def _key(row: tuple[Any, ...], positions: tuple[int, ...]) -> tuple[Any, ...]:
    return tuple(row[i] for i in positions)


def _walked(
    rows: Iterable[tuple[Any, ...]], positions: tuple[int, ...], unique: bool,
    digest: TableDigest, side: str,
) -> Iterator[tuple[tuple[Any, ...], bytes, tuple[Any, ...]]]:
    """(order, encoding, row) for each row, digested, checked to come in key order."""
    last = None
    for row in rows:
        row = tuple(row)
        order = order_of(_key(row, positions))
        if last is not None and (order < last or (unique and order == last)):
            raise OutOfOrder(f"the {side}'s rows are not in key order at {_key(row, positions)}")
        last = order
        encoded = encode_row(row)
        digest.add(encoded)
        yield order, encoded, row
