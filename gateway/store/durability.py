"""Make committed SQLite transactions survive a power cut with as few fsyncs as the relay allows.

The database runs in WAL mode with `synchronous=NORMAL`: a commit reaches the -wal file (the
OS page cache: safe against a killed process) and SQLite syncs it only at checkpoints. What
we promise the outside world must be on disk first, so:

* `WalFile.sync()` fdatasyncs the -wal file. One fsync of that file makes durable every commit
  written to it before the fsync began, by any connection of any process (it is one inode).
* `DurabilityBarrier` is a group commit over it: `mark()` is a point in the write order (taken
  after a commit); `await flush(mark)` returns once an fsync that began after that point has
  finished. Callers that wait together share one fsync; one that comes while an fsync runs
  that began too early for it waits for the next one, which all such callers then share.
* `deferring_commits()` marks the code whose commits may wait for a flush (the relay, which
  flushes before it answers or hands a link on). Every other commit is synced at once, as
  `synchronous=FULL` did.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

Sync = Callable[[int], None]


class WalFile:
    """The -wal file of a database, opened once and fdatasync'd on demand.

    SQLite keeps the file while any connection is open (a TRUNCATE checkpoint empties it in
    place), but it deletes it when the last connection closes and makes a new one on the next
    open: so each sync checks that the path still names the inode we hold, and reopens if not.
    A newly opened file has its directory fsync'd once, so its name survives a power cut too.
    """

    def __init__(self, path: Path, fsync: Sync = os.fdatasync):
        self.path = path
        self._fsync = fsync
        self._descriptor: int | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()  # the barrier's thread and synced-at-once commits share it

    def sync(self) -> None:
        with self._lock:
            descriptor = self._current()
            if descriptor is not None:
                self._fsync(descriptor)

    def _current(self) -> int | None:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            # No WAL: everything was checkpointed into the database (synced) when it went.
            self._forget()
            return None
        if (found.st_dev, found.st_ino) != self._identity:
            self._forget()
            descriptor = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            opened = os.fstat(descriptor)
            self._descriptor, self._identity = descriptor, (opened.st_dev, opened.st_ino)
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._fsync(directory)
            finally:
                os.close(directory)
        return self._descriptor

    def _forget(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
        self._descriptor = self._identity = None

    def close(self) -> None:
        with self._lock:
            self._forget()


class DurabilityBarrier:
    """Group commit: one fsync (in one thread of its own) for every caller waiting on it."""

    def __init__(self, sync: Callable[[], None]):
        self._sync = sync
        self._points = 0  # the last mark handed out
        self._durable = 0  # every mark up to this one is on disk
        self._counter_lock = threading.Lock()  # mark() and sync_now() run in worker threads
        self._running: asyncio.Future | None = None  # the fsync under way…
        self._running_covers = 0  # …and the last mark it covers (taken before it began)
        self._next: asyncio.Future | None = None  # the fsync to start when that one ends
        self._executor: ThreadPoolExecutor | None = None
        # After a failed fsync the kernel may have dropped what it could not write, and a later
        # fsync succeeds without it: nothing written before can be trusted on disk any more.
        self._failure: OSError | None = None
        self.fsyncs = 0  # made through this barrier (flushes and sync_now), for tests and bench

    def mark(self) -> int:
        """A point after everything written so far (call it after the commit it stands for)."""
        with self._counter_lock:
            self._points += 1
            return self._points

    async def flush(self, mark: int | None = None) -> None:
        """Return once everything written before `mark` (default: every mark so far) is on
        disk. A failed fsync is raised (OSError) to every caller that waited on it, and to
        every later one that needs an fsync: see _failure."""
        target = self._points if mark is None else mark
        if self._durable >= target:
            return
        if self._running is not None and self._running_covers >= target:
            waited_on = self._running
        elif self._running is None:
            waited_on = self._start()
        else:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            waited_on = self._next
        # A caller that gives up (its session cancelled) must not cancel the others' fsync.
        await asyncio.shield(waited_on)

    async def flush_deferred(self) -> None:
        """Flush the commits deferred so far in this context (deferring_commits), if any."""
        deferred = deferred_commits()
        if deferred is not None and deferred.last:
            await self.flush(deferred.last)

    def sync_now(self) -> None:
        """Sync in the calling thread (a commit that cannot wait for a flush)."""
        mark = self.mark()
        self._counted_sync()
        self._covered(mark)

    def _start(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-fsync")
        covers = self._points  # read before the fsync begins: it covers no later mark
        running = loop.run_in_executor(self._executor, self._counted_sync)
        self._running, self._running_covers = running, covers
        running.add_done_callback(lambda done: self._finished(done, covers))
        return running

    def _finished(self, done: asyncio.Future, covers: int) -> None:
        if not done.cancelled() and done.exception() is None:
            self._covered(covers)
        self._running = None
        waiting, self._next = self._next, None
        if waiting is not None:
            self._start().add_done_callback(lambda next_done: _pass_on(next_done, waiting))

    def _counted_sync(self) -> None:
        if self._failure is not None:
            raise OSError(self._failure.errno, f"an earlier fsync of the WAL failed: {self._failure}")
        try:
            self._sync()
        except OSError as error:
            self._failure = error
            raise
        with self._counter_lock:
            self.fsyncs += 1

    def _covered(self, mark: int) -> None:
        with self._counter_lock:
            self._durable = max(self._durable, mark)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class SyncedAtCommit:
    """The barrier of a database whose every commit SQLite syncs itself (`synchronous=FULL`):
    there is never anything to wait for."""

    fsyncs = 0

    def mark(self) -> int:
        return 0  # no point to wait for

    async def flush(self, mark: int | None = None) -> None:
        return None

    async def flush_deferred(self) -> None:
        return None

    def close(self) -> None:
        return None


def _pass_on(done: asyncio.Future, waiting: asyncio.Future) -> None:
    if waiting.done():
        return
    if done.cancelled():
        waiting.cancel()
    elif done.exception() is not None:
        waiting.set_exception(done.exception())
        waiting.exception()  # retrieved: its callers may all have gone
    else:
        waiting.set_result(None)


@dataclass
class DeferredCommits:
    """The commits made by one piece of work whose durability waits for a flush."""

    last: int = 0  # the mark of the latest one (0: none yet)


_deferred: contextvars.ContextVar[DeferredCommits | None] = contextvars.ContextVar(
    "deferred_commits", default=None
)


@contextmanager
def deferring_commits() -> Iterator[DeferredCommits]:
    """Within this block (and the threads asyncio.to_thread starts from it) commits are not
    synced one by one: the caller flushes the barrier before anyone outside learns of them."""
    deferred = DeferredCommits()
    token = _deferred.set(deferred)
    try:
        yield deferred
    finally:
        _deferred.reset(token)


def deferred_commits() -> DeferredCommits | None:
    """The deferral in force here, if any."""
    return _deferred.get()
