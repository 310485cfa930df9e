"""Run a private, real PostgreSQL for tests: its own cluster, a free loopback port, fsync on.

Like tests/support/clamav.py for clamd: Debian's `postgresql` package provides the programs
(/usr/lib/postgresql/VERSION/bin, the newest version is used); nothing of the system's own
cluster is touched. initdb and postgres refuse to run as root, so under root (CI) they run as the
`postgres` system user in a private directory that user owns.

    with PostgresServer(tmp_path) as server:
        dsn = server.create_database()  # fresh and empty: postgresql://postgres@…/test_…

At the end, the few helpers that rerun the store's SQLite tests on such a server (raw_rows,
row_count, opening, database_tests, about_sqlite) and make its races certain (wait_until_blocked).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from tests.support.processes import free_port, short_socket_dir

SUPERUSER = "postgres"
_INSTALL_HINT = (
    "PostgreSQL is not installed: `make test` installs it (Makefile target system-deps, Debian "
    "package postgresql); by hand: apt-get install postgresql"
)
_SYSTEM_USER = "postgres"  # created by the Debian package; runs the server when we are root
_SOCKET_NAME = ".s.PGSQL.65535"  # the longest name the server gives its socket
_START_ATTEMPTS = 3  # free_port() can race with another process taking the port


class PostgresNotInstalled(RuntimeError):
    pass


def server_programs() -> Path:
    """The bin directory of the newest PostgreSQL installed the Debian way."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda initdb: _version_key(initdb.parent.parent.name),
    )
    if not found:
        raise PostgresNotInstalled(_INSTALL_HINT)
    return found[-1].parent


class PostgresServer:
    """A private cluster, the postmaster our child process; `dsn` is its admin database, trust
    auth on 127.0.0.1 only. `kill()` is SIGKILL of the postmaster and its children (a crash);
    `start()` again recovers the same cluster on the same port."""

    def __init__(self, workdir: Path, *, start_timeout: float = 60.0):
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._bin = server_programs()
        self._as_system_user = os.geteuid() == 0
        self._private = self._private_dir()
        self._data = (self._private if self._as_system_user else workdir) / "pgdata"
        self._log = workdir / "postgres.log"  # opened by us, written through the inherited fd
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    @property
    def dsn(self) -> str:
        return self._dsn("postgres")

    def __enter__(self) -> Self:
        try:
            self.initdb()
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def initdb(self) -> None:
        # --no-sync: only initdb's own closing sync is skipped; the running server has fsync on.
        self._run([
            str(self._bin / "initdb"), "-D", str(self._data), "-U", SUPERUSER, "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        ])
        with open(self._data / "postgresql.conf", "a") as conf:
            conf.write("\n".join([
                "",
                "# tests/support/postgres.py",
                "listen_addresses = '127.0.0.1'",
                f"unix_socket_directories = '{self._private}'",
                "fsync = on",
                "synchronous_commit = on",
                "full_page_writes = on",
                "shared_buffers = 32MB",
                "max_connections = 100",
                "log_min_messages = warning",
                "",
            ]))

    def start(self) -> None:
        """Start (or restart after kill()) on the port chosen the first time. The postmaster
        runs in the foreground as our child, not through `pg_ctl start`: killed, it must be
        reaped by us, as the init of a container may leave its zombie holding postmaster.pid."""
        for attempt in range(_START_ATTEMPTS):
            port = self.port or free_port()
            with open(self._log, "ab") as log:
                self._process = subprocess.Popen(
                    [str(self._bin / "postgres"), "-D", str(self._data), "-p", str(port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    **self._as_server_user(),
                )
            if self._wait_ready(port):
                self.port = port
                return
            self._process.wait()
            if self.port is not None or attempt == _START_ATTEMPTS - 1:
                raise RuntimeError(f"postgres did not start:\n{self.log()}")

    def create_database(self) -> str:
        """DSN of a new, empty database with a unique name (cheap: a copy of template1)."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self._dsn(name)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: the server dies as in a crash."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        backends = _children(process.pid)
        process.kill()
        process.wait()
        for pid in backends:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in backends) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, grace: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: clients are disconnected
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self._process = process
                self.kill()
        shutil.rmtree(self._private, ignore_errors=True)

    def log(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def _dsn(self, database: str, port: int | None = None) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{port or self.port}/{database}"

    def _wait_ready(self, port: int) -> bool:
        """True once a client gets in; False if the postmaster exited (e.g. port taken)."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                psycopg.connect(self._dsn("postgres", port), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres not ready within {self.start_timeout}s:\n{self.log()}")

    def _as_server_user(self) -> dict:
        if not self._as_system_user:
            return {}
        return {"user": _SYSTEM_USER, "group": _SYSTEM_USER, "extra_groups": [],
                "cwd": self._private}

    def _run(self, command: list[str]) -> None:
        outcome = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=self.start_timeout + 30, **self._as_server_user(),
        )
        if outcome.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{outcome.stdout}")

    def _private_dir(self) -> Path:
        """A short directory (unix socket path limit) that the server's user owns: /tmp/pg-…
        The cluster itself lives here under root, because pytest's temp dirs are mode 0700."""
        private = short_socket_dir("pg-", _SOCKET_NAME)
        if self._as_system_user:
            try:
                user = pwd.getpwnam(_SYSTEM_USER)
            except KeyError:
                shutil.rmtree(private, ignore_errors=True)
                raise PostgresNotInstalled(
                    f"running as root needs the '{_SYSTEM_USER}' system user. {_INSTALL_HINT}"
                ) from None
            os.chown(private, user.pw_uid, user.pw_gid)
        return private


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid …": comm may hold spaces, so split after its closing paren.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie (killed, not yet reaped by init) counts as gone.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -- running the store's tests on PostgreSQL --------------------------------------------------


def raw_rows(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows read (or a statement run) on a connection of our own, as an admin would: not the
    store's pool, and not its transaction."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


def row_count(db, table: str) -> int:
    """count(db, table) of the SQLite test modules, from outside the store."""
    return raw_rows(db.location.url, f"SELECT count(*) FROM {table}")[0][0]


def opening(dsn: str):
    """A stand-in for Database in a test module written for SQLite: whatever file it is given
    opens the PostgreSQL database `dsn`, the same one each time (as reopening the file)."""
    from gateway.config import PostgresUrl
    from gateway.store.db import Database

    def open_database(_path, **options) -> Database:
        return Database(PostgresUrl(dsn), **options)

    return open_database


def wait_until_blocked(dsn: str, done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait until a session on this database waits for a lock another holds (True), or until
    `done()` says the code under test finished without waiting (False: the race it was meant
    to lose, it won)."""
    database = dsn.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = raw_rows(
            dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND wait_event_type = 'Lock'", (database,),
        )[0][0]
        if waiting:
            return True
        if done():
            return False
        time.sleep(0.01)
    raise AssertionError(f"nothing waited for a lock, nor finished, within {timeout}s")


def about_sqlite(reason: str):
    """Stands in for an imported SQLite test that has no meaning on PostgreSQL: skipped, saying
    why."""
    import pytest

    @pytest.mark.skip(reason=f"about SQLite itself: {reason}")
    def skipped() -> None:
        """Skipped on PostgreSQL."""

    return skipped


def database_tests(module, *fixtures: str) -> dict:
    """The tests of a SQLite test module that take one of `fixtures` (a database, or a
    directory to make one in), to run again in a module of PostgreSQL tests:
    `globals().update(database_tests(...))`. The rest open no database: they run once, there."""
    from inspect import signature

    return {
        name: test for name, test in vars(module).items()
        if name.startswith("test_") and callable(test)
        and set(fixtures) & set(signature(test).parameters)
    }
