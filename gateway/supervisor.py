"""`serve`: bind the listeners and clean up after a crash once, then keep `gateway.workers`
worker processes (gateway/worker.py) serving on them.

- A worker that dies is started again at its position (on the same sockets, so connections
  queued meanwhile are served); what it held in the shared ledger is given back at once. Five
  in a row that die before they are ready (a broken store, a missing key) stop `serve` with
  status 1, for systemd to see, rather than a restart loop it cannot.
- The worker at position 0 leads: admin listener, housekeeping and the notice worker.
- SIGTERM or SIGINT: every worker stops (messages under way finish, new clients get 421);
  the supervisor exits when they have.
- SIGHUP: the configuration is read and checked again. If it is valid, a new set of workers
  starts with it and, once every one of them is ready, the old set retires (its messages under
  way finish); otherwise — or if a new worker cannot start — the old set keeps running and the
  log says why. Listen addresses, storage and the number of workers need a restart.

The supervisor runs no event loop and no thread: it forks from a plain loop over a selector
(readiness pipes, and a wake-up pipe for signals), so each child starts clean.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gateway import crashpoints
from gateway.app import (
    WorkerRole,
    claim_data_dir,
    clean_up_after_crash,
    load_master_keys,
    open_store,
    utc_now,
)
from gateway.config import Config, ConfigError
from gateway.ledger import WorkerLedger
from gateway.listeners import bind_group
from gateway.ops.metrics import count_across_processes
from gateway.worker import EXIT_START_FAILED, READY, die_with_parent, run_worker

log = logging.getLogger("gateway")

START_TIMEOUT = 60.0  # a worker not ready by then is taken as unable to start
_RESTART_PAUSE = 1.0  # between restarts at one position, so a crash loop does not spin
_KILL_GRACE = 30.0  # after stop_timeout and one next-hop answer: then SIGKILL
FAILED_STARTS_LIMIT = 5  # workers of one position gone before ready, in a row: give up


def worker_count(config: Config) -> int:
    if config.gateway.workers:
        return config.gateway.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def needs_restart(old: Config, new: Config) -> list[str]:
    """The settings a reload cannot change: they belong to the sockets and the store."""
    fixed = {
        "smtp.listen": lambda c: (c.smtp.listen_host, c.smtp.listen_port),
        "portal.listen": lambda c: (c.portal.listen_host, c.portal.listen_port),
        "admin.listen": lambda c: (c.admin.listen_host, c.admin.listen_port),
        "storage": lambda c: c.storage,
        "gateway.workers": lambda c: worker_count(c),
    }
    return [name for name, value in fixed.items() if value(old) != value(new)]


@dataclass
class _Worker:
    pid: int
    position: int
    row: int
    generation: int
    ready_fd: int | None
    ready: bool = False
    retiring: bool = False


class Supervisor:
    def __init__(self, config: Config, read_config: Callable[[], Config],
                 check_config: Callable[[Config], None] = lambda config: None):
        """`read_config` reads the configuration again (on SIGHUP); `check_config` raises
        ConfigError for one no worker could start with (keys, templates, users file)."""
        self.config = config
        self._read_config, self._check_config = read_config, check_config
        self._positions = worker_count(config)
        self._workers: dict[int, _Worker] = {}
        self._generation = 0  # the set serving new clients
        self._pending: int | None = None  # a reload's set, until all of it is ready
        self._pending_config: Config | None = None
        self._pending_since = 0.0
        self._stopping_since: float | None = None
        self._restart_at: dict[int, float] = {}  # position → when its last worker started
        self._failed_starts: dict[int, int] = {}  # position → its workers gone before ready
        self._signals: list[int] = []
        self._exit_status = 0

    # --- start -------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        master_keys = load_master_keys(config)
        db, blobs = open_store(config, master_keys)
        self._lock = lock = claim_data_dir(config)
        if lock is None:
            log.warning("another gateway uses %s: start-up clean-up keeps its grace period",
                        config.storage.data_dir)
        try:
            # Sole writer only on its own: other nodes of a cluster may be storing right now.
            sole = lock is not None and not config.storage.shared
            clean_up_after_crash(db, blobs, utc_now(), sole)
        finally:
            db.close()
            blobs.close()
        del master_keys  # each worker reads them for itself
        if crashpoints.armed():
            crashpoints.arm(crashpoints.armed(), whole_service=os.getpid())
        self._smtp = bind_group(config.smtp.listen_host, config.smtp.listen_port, self._positions)
        self._portal = bind_group(
            config.portal.listen_host, config.portal.listen_port, self._positions
        )
        (self._admin,) = bind_group(config.admin.listen_host, config.admin.listen_port, 1)
        # Rows for three sets at once: serving, retiring, and a reload's new one.
        self._ledger = WorkerLedger(3 * self._positions)
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="ppap-gateway-metrics-"))
        count_across_processes(self._metrics_dir)
        self._notice_wake = os.pipe()
        for end in self._notice_wake:
            os.set_blocking(end, False)
        self._free_rows = list(range(self._ledger.rows))
        try:
            return self._supervise()
        finally:
            for sock in (*sum(self._smtp, ()), *sum(self._portal, ()), *self._admin):
                sock.close()
            if lock is not None:
                os.close(lock)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._ledger.close()

    def _supervise(self) -> int:
        self._selector = selectors.DefaultSelector()
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        self._wake_read, self._wake_write = wake_read, wake_write
        self._selector.register(wake_read, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._note_signal)
        self._pending, self._pending_config = 0, self.config
        self._pending_since = time.monotonic()
        for position in range(self._positions):
            self._start_worker(position, 0, self.config)
        while self._workers or self._stopping_since is None:
            self._tick()
        return self._exit_status

    def _note_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _start_worker(self, position: int, generation: int, config: Config) -> None:
        row = self._free_rows.pop(0)
        ready_read, ready_write = os.pipe()
        self._restart_at[position] = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            status = 1
            try:
                os.close(ready_read)
                self._become_worker()
                role = WorkerRole(
                    smtp_sockets=self._smtp[position], portal_sockets=self._portal[position],
                    admin_sockets=self._admin, ledger_row=self._ledger.row(row),
                    leader=position == 0, notice_wake=self._notice_wake,
                    metrics_dir=self._metrics_dir, workers=self._positions,
                )
                status = run_worker(config, role, ready_write)
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(status)
        os.close(ready_write)
        self._workers[pid] = _Worker(pid, position, row, generation, ready_read)
        self._selector.register(ready_read, selectors.EVENT_READ, pid)

    def _become_worker(self) -> None:
        parent = os.getppid()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        for worker in self._workers.values():
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
        if self._lock is not None:
            os.close(self._lock)  # the data directory's lock is the supervisor's
        die_with_parent(parent)

    # --- the loop --------------------------------------------------------------------------

    def _tick(self) -> None:
        for key, _ in self._selector.select(timeout=1.0):
            if key.data is None:
                _drain_pipe(self._wake_read)
            else:
                self._readiness(key.data)
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                self._reload()
            else:
                self._stop(f"signal {signal.Signals(signum).name}")
        self._check_timers()

    def _readiness(self, pid: int) -> None:
        worker = self._workers[pid]
        try:
            said = os.read(worker.ready_fd, len(READY))
        except OSError:
            said = b""
        self._stop_watching(worker)
        if said == READY:
            worker.ready = True
            self._generation_ready_check()

    def _stop_watching(self, worker: _Worker) -> None:
        """Close the worker's readiness pipe: it said ready, or it is gone."""
        if worker.ready_fd is not None:
            self._selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _generation_ready_check(self) -> None:
        if self._pending is None:
            return
        members = [w for w in self._workers.values() if w.generation == self._pending]
        if len(members) < self._positions or not all(w.ready for w in members):
            return
        old = self._generation
        first = self._pending == 0
        self._generation, self.config = self._pending, self._pending_config
        self._pending = self._pending_config = None
        if first:
            self._log_ready()
            return
        for worker in self._workers.values():
            if worker.generation == old and not worker.retiring:
                worker.retiring = True
                _signal(worker.pid, signal.SIGUSR1)
        log.info("reloaded: %d new worker(s) serve; the old ones finish their messages and go",
                 self._positions)

    def _log_ready(self) -> None:
        config = self.config
        log.info(
            "ready: smtp=%s portal=%s admin=%s workers=%d (pids %s) data=%s"
            " logs=stderr (one line per message)",
            _address(self._smtp[0]), _address(self._portal[0]), _address(self._admin),
            self._positions, " ".join(str(pid) for pid in sorted(self._workers)),
            config.storage.data_dir.resolve(),
        )

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            self._stop_watching(worker)
            self._ledger.clear(worker.row)
            self._free_rows.append(worker.row)
            self._exited(worker, os.waitstatus_to_exitcode(status))

    def _exited(self, worker: _Worker, code: int) -> None:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if self._stopping_since is not None or worker.retiring:
            if code != 0:
                log.warning("worker %d (pid %d) ended with %s", worker.position, worker.pid, how)
            return
        if worker.generation == self._pending:
            self._reload_failed(f"a new worker could not start ({how}; its error is above)")
            return
        failed = self._failed_starts[worker.position] = (
            0 if worker.ready else self._failed_starts.get(worker.position, 0) + 1)
        if failed >= FAILED_STARTS_LIMIT:
            # Something outside us is broken (the store, the key): say so to whoever runs us
            # (systemd restarts us after its RestartSec) instead of spinning here.
            log.error("worker %d could not start %d times in a row (%s; its error is above): "
                      "giving up", worker.position, failed, how)
            self._exit_status = 1
            self._stop("workers cannot start")
            return
        log.error("worker %d (pid %d) died (%s): starting it again", worker.position,
                  worker.pid, how)
        self._restart(worker.position)

    def _restart(self, position: int) -> None:
        wait = self._restart_at.get(position, 0) + _RESTART_PAUSE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._start_worker(position, self._generation, self.config)

    # --- reload and stop ---------------------------------------------------------------------

    def _reload(self) -> None:
        if self._stopping_since is not None:
            return
        if self._pending is not None:
            log.warning("reload refused: the previous reload is still starting its workers")
            return
        try:
            new = self._read_config()
            changed = needs_restart(self.config, new)
            if changed:
                raise ConfigError(", ".join(changed), "changed: needs a restart, not a reload")
            self._check_config(new)
        except (ConfigError, ValueError, OSError) as error:
            log.error("reload refused, the running configuration stays: %s", error)
            return
        busy_rows = self._ledger.rows - len(self._free_rows)
        if busy_rows + self._positions > self._ledger.rows:
            log.warning("reload refused: workers of two reloads ago are still finishing")
            return
        self._pending, self._pending_config = self._generation + 1, new
        self._pending_since = time.monotonic()
        log.info("reloading %s: starting %d worker(s)", new.source, self._positions)
        for position in range(self._positions):
            self._start_worker(position, self._pending, new)

    def _reload_failed(self, why: str) -> None:
        pending, self._pending, self._pending_config = self._pending, None, None
        for worker in self._workers.values():
            if worker.generation == pending:
                worker.retiring = True
                _signal(worker.pid, signal.SIGTERM)
        if pending == 0:  # the first start
            self._exit_status = EXIT_START_FAILED
            self._stop(why)
            return
        log.error("reload failed, the running configuration stays: %s", why)

    def _stop(self, why: str) -> None:
        if self._stopping_since is not None:
            return
        log.info("stopping (%s): %d worker(s) finish their messages", why, len(self._workers))
        self._stopping_since = time.monotonic()
        for worker in self._workers.values():
            _signal(worker.pid, signal.SIGTERM)

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self._pending is not None and now - self._pending_since > START_TIMEOUT:
            self._reload_failed(f"new workers not ready within {START_TIMEOUT:g} s")
        if self._stopping_since is not None:
            limit = (self.config.gateway.stop_timeout.total_seconds()
                     + self.config.next_hop.timeout.total_seconds() + _KILL_GRACE)
            if now - self._stopping_since > limit:
                for worker in self._workers.values():
                    _signal(worker.pid, signal.SIGKILL)


def _address(group: tuple) -> str:
    """HOST:PORT of the first socket of a listening group."""
    return "%s:%s" % group[0].getsockname()[:2]


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _drain_pipe(descriptor: int) -> None:
    try:
        while os.read(descriptor, 512):
            pass
    except BlockingIOError:
        pass
