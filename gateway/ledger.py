"""What the worker processes of one `serve` count together: the bytes held in flight (the one
DATA-and-unlocking budget), the open SMTP sessions, in total and per client address, and the
messages being relayed (so a client's retry that reaches another worker is told "still
relaying", as it would be by the same one).

A shared anonymous mapping, made by the supervisor before it forks the workers (so they inherit
it). Each worker writes only its own row; a limit is checked against the sum of all rows under a
POSIX record lock (the kernel releases it if its holder dies), and the supervisor zeroes the row
of a worker that has exited, so what a crashed worker held is given back at once.

Sessions per client are counted in buckets of a keyed hash of the address (the key is made at
start and never leaves the processes): two clients that share a bucket share its limit — a
stricter limit, never a looser one, and one an outsider cannot aim at a chosen address.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile

CLIENT_BUCKETS = 4096
RELAYING_SLOTS = 1024  # messages one worker relays at once (sessions, and relays of departed ones)
_HEAD = struct.Struct("=qq")  # bytes in flight, open sessions
_BUCKET = struct.Struct("=I")
_KEY = struct.Struct("=Q")
_RELAYING_AT = _HEAD.size + CLIENT_BUCKETS * _BUCKET.size
ROW_BYTES = _RELAYING_AT + RELAYING_SLOTS * _KEY.size
_FREE = bytes(_KEY.size)


class WorkerLedger:
    """The shared counts of up to `rows` workers at a time (old and new ones during a reload)."""

    def __init__(self, rows: int):
        self.rows = rows
        self._map = mmap.mmap(-1, rows * ROW_BYTES)  # MAP_SHARED | MAP_ANONYMOUS
        self._lock_file = tempfile.TemporaryFile()
        self._key = os.urandom(16)

    def close(self) -> None:
        self._lock_file.close()
        self._map.close()

    def __enter__(self) -> WorkerLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def row(self, index: int) -> LedgerRow:
        if not 0 <= index < self.rows:
            raise IndexError(f"ledger row {index} of {self.rows}")
        return LedgerRow(self, index)

    def clear(self, index: int) -> None:
        """Give back all that row `index` held: its worker has exited (supervisor only)."""
        with self._locked():
            start = index * ROW_BYTES
            self._map[start:start + ROW_BYTES] = bytes(ROW_BYTES)

    def totals(self) -> tuple[int, int]:
        """Bytes in flight and open sessions, summed over every row."""
        data = sessions = 0
        for index in range(self.rows):
            held, open_ = _HEAD.unpack_from(self._map, index * ROW_BYTES)
            data, sessions = data + held, sessions + open_
        return data, sessions

    def bucket(self, client: str) -> int:
        digest = hashlib.blake2b(client.encode(), digest_size=4, key=self._key).digest()
        return int.from_bytes(digest, "little") % CLIENT_BUCKETS

    def client_sessions(self, bucket: int) -> int:
        offset = _HEAD.size + bucket * _BUCKET.size
        return sum(_BUCKET.unpack_from(self._map, i * ROW_BYTES + offset)[0]
                   for i in range(self.rows))

    def relaying_at(self, key: bytes) -> int | None:
        """The offset of `key` in any row's messages being relayed, or None."""
        for index in range(self.rows):
            found = self._slot_of(index, key)
            if found is not None:
                return found
        return None

    def _slot_of(self, index: int, key: bytes) -> int | None:
        """The offset of the first slot of row `index` holding `key` (a C-speed find; only
        whole, aligned slots count), or None."""
        start = index * ROW_BYTES + _RELAYING_AT
        end = start + RELAYING_SLOTS * _KEY.size
        found = self._map.find(key, start, end)
        while found != -1 and (found - start) % _KEY.size:
            found = self._map.find(key, found + 1, end)
        return None if found == -1 else found

    def _locked(self) -> _RecordLock:
        return _RecordLock(self._lock_file.fileno())

    def _add(self, index: int, data: int = 0, sessions: int = 0) -> None:
        start = index * ROW_BYTES
        held, open_ = _HEAD.unpack_from(self._map, start)
        _HEAD.pack_into(self._map, start, held + data, open_ + sessions)

    def _add_client(self, index: int, bucket: int, delta: int) -> None:
        offset = index * ROW_BYTES + _HEAD.size + bucket * _BUCKET.size
        _BUCKET.pack_into(self._map, offset, _BUCKET.unpack_from(self._map, offset)[0] + delta)


class _RecordLock:
    """fcntl.lockf: held per process, not per descriptor, so forked workers exclude each other."""

    def __init__(self, descriptor: int):
        self._descriptor = descriptor

    def __enter__(self) -> None:
        fcntl.lockf(self._descriptor, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.lockf(self._descriptor, fcntl.LOCK_UN)


class LedgerRow:
    """One worker's row: what it charges, checked against what all workers hold."""

    def __init__(self, ledger: WorkerLedger, index: int):
        self._ledger, self.index = ledger, index

    def take_data(self, size: int, limit: int) -> bool:
        with self._ledger._locked():
            if self._ledger.totals()[0] + size > limit:
                return False
            self._ledger._add(self.index, data=size)
            return True

    def give_back_data(self, size: int) -> None:
        with self._ledger._locked():
            self._ledger._add(self.index, data=-size)

    def admit(self, client: str, max_sessions: int, max_per_client: int) -> bool:
        bucket = self._ledger.bucket(client)
        with self._ledger._locked():
            if self._ledger.totals()[1] >= max_sessions:
                return False
            if self._ledger.client_sessions(bucket) >= max_per_client:
                return False
            self._ledger._add(self.index, sessions=1)
            self._ledger._add_client(self.index, bucket, 1)
            return True

    def release(self, client: str) -> None:
        bucket = self._ledger.bucket(client)
        with self._ledger._locked():
            self._ledger._add(self.index, sessions=-1)
            self._ledger._add_client(self.index, bucket, -1)

    def claim_relaying(self, key: bytes) -> bool | None:
        """True if this worker now relays the message `key` names; False if some worker
        already does; None if this worker's slots are full (then nobody is told)."""
        ledger = self._ledger
        with ledger._locked():
            if ledger.relaying_at(key) is not None:
                return False
            free = ledger._slot_of(self.index, _FREE)
            if free is None:
                return None
            ledger._map[free:free + _KEY.size] = key
            return True

    def end_relaying(self, key: bytes) -> None:
        ledger = self._ledger
        with ledger._locked():
            found = ledger._slot_of(self.index, key)
            if found is not None:
                ledger._map[found:found + _KEY.size] = _FREE


class SharedDataBudget:
    """gateway.inflight.DataBudget's interface over the ledger: one budget for all workers."""

    def __init__(self, row: LedgerRow, limit: int):
        self._row, self.limit = row, limit

    @property
    def used(self) -> int:
        return self._row._ledger.totals()[0]

    def take(self, size: int) -> bool:
        return self._row.take_data(size, self.limit)

    def give_back(self, size: int) -> None:
        self._row.give_back_data(size)


class SharedSessionSlots:
    """gateway.smtp.server.SessionSlots' interface over the ledger: caps for all workers."""

    def __init__(self, row: LedgerRow, max_sessions: int, max_per_client: int):
        self._row = row
        self.max_sessions, self.max_per_client = max_sessions, max_per_client

    def admit(self, client: str) -> bool:
        return self._row.admit(client, self.max_sessions, self.max_per_client)

    def release(self, client: str) -> None:
        self._row.release(client)


class SharedRelayingNow:
    """gateway.pipeline.admission.RelayingNow's interface over the ledger: the messages every
    worker is relaying, by fingerprint."""

    def __init__(self, row: LedgerRow):
        self._row = row

    @staticmethod
    def _key(fingerprint: str) -> bytes:
        key = hashlib.blake2b(fingerprint.encode(), digest_size=_KEY.size).digest()
        return key if key != _FREE else b"\x01" + key[1:]

    def claim(self, fingerprint: str) -> bool:
        """False if the message is being relayed already (by any worker)."""
        return self._row.claim_relaying(self._key(fingerprint)) is not False

    def release(self, fingerprint: str) -> None:
        self._row.end_relaying(self._key(fingerprint))
