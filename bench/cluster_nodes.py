"""One measurement of the cluster bench: smtp-source → one or two `serve` nodes on a given store
→ smtp-sink, timed until the sink has counted every message, with the CPU of the nodes' process
trees and of the PostgreSQL server's (the postmaster and every backend, checkpointer, WAL writer).

The stores: `embedded` (SQLite + local directory, today's default), `pg-directory` (metadata in
PostgreSQL, blobs in the node's data directory), `pg-database` (both in PostgreSQL,
`storage.blobs = "database"`). Each measurement gets a fresh data directory per node and, on
PostgreSQL, a fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from load_paths import SINK_PORT, Cell, Sink, accepts, smtp_source, wait_until
from proc_tree import tree_usage
from relay_throughput import (
    ROOT,
    BenchError,
    data_dir_sizes,
    gateway_command,
    read_gateway_log,
    spawn,
)

sys.path.insert(0, str(ROOT))  # for tests.support: the private PostgreSQL and the shared key the tests use
from tests.support.cluster import shared_master_key
from tests.support.postgres import PostgresServer

# The nodes of a cluster share their master key through the environment (docs/cluster.md);
# relay_throughput.spawn passes the bench's environment on, but not PPAP_GATEWAY_MASTER_KEY.
KEY_ENV = "PPAP_BENCH_CLUSTER_MASTER_KEY"
# The supervisor's (or a single process's) start-up line, with the port it bound: listening on
# port 0 leaves no gap between choosing a free port and binding it for another process to fill.
READY = re.compile(r"\bready: smtp=[^\s:]+:(\d+) ")


@dataclass(frozen=True)
class Setup:
    """What one row of the tables measures: a store, how many nodes with how many workers, and
    how many smtp-source processes split the sessions and messages (source i → node i % nodes)."""

    label: str
    store: str  # "embedded", "pg-directory" or "pg-database"
    nodes: int = 1
    workers: int | None = None  # gateway.workers of each node; None: its default ("auto")
    sources: int = 1


@dataclass
class Run:
    setup: Setup
    cell: Cell
    seconds: float = 0.0  # first connection → the sink counted the last message
    gateway_cpu: float = 0.0  # seconds, every node's process tree, during the load
    database_cpu: float | None = None  # seconds, the postmaster's tree, load + a CHECKPOINT
    wal_bytes: int | None = None  # WAL the server wrote in that window
    transactions: int | None = None  # transactions that wrote, in that window
    processes: int = 0  # the nodes' processes together
    handling_ms: list[float] = field(default_factory=list)  # log `ms`: end of DATA → reply
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.cell.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_seconds(self) -> float:
        """The nodes' and the database server's together."""
        return self.gateway_cpu + (self.database_cpu or 0.0)

    def per_message_ms(self, seconds: float | None) -> float | None:
        return None if seconds is None else 1000 * seconds / self.cell.messages


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


class DatabaseServer:
    """The private PostgreSQL (tests/support/postgres.py) all clustered measurements share. Its
    postmaster's pid is the parent of any backend: PostgresServer does not expose its process."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        with psycopg.connect(server.dsn) as connection:
            backend = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
            self.postmaster = _parent_of(backend)
            self.version = connection.execute("SHOW server_version").fetchone()[0]

    def cpu_seconds(self) -> float:
        """utime + stime of the postmaster, its live children and the backends it has reaped."""
        return tree_usage(self.postmaster).cpu_seconds

    def settle(self) -> tuple[int, int]:
        """CHECKPOINT (dirty pages to disk now, so that what a measurement wrote is paid inside
        it), then where the server is: (WAL bytes inserted since it began, transaction ids handed
        out so far, one per transaction that wrote). Both exact at once, unlike the statistics
        views, which backends update when they like."""
        with psycopg.connect(self.server.dsn, autocommit=True) as connection:
            connection.execute("CHECKPOINT")
            return connection.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint,"
                " pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()

    def committed_blobs(self, dsn: str) -> int:
        with psycopg.connect(dsn) as connection:
            query = "SELECT count(*) FROM blobs WHERE committed_at IS NOT NULL"
            return connection.execute(query).fetchone()[0]

    def drop(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.server.dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Node:
    """One `serve` on a fresh data directory, every listener on a port of its choosing, next hop
    the sink; started once it has logged that it (and every worker) is ready."""

    def __init__(self, name: str, workdir: Path, options: list[str], deadline: float) -> None:
        self.data_dir = workdir / f"data-{name}"
        listeners = ["smtp.listen=127.0.0.1:0", "portal.listen=127.0.0.1:0", "admin.listen=127.0.0.1:0"]
        self.child = spawn(name, gateway_command(self.data_dir, SINK_PORT, [*options, *listeners], None), workdir)
        try:
            wait_until(lambda: self._ready() is not None, min(deadline, time.monotonic() + 120),
                       f"{name} ready", lambda: self.child.process.poll() is None)
        except BenchError:
            self.child.stop()
            raise BenchError(f"{name} did not start: "
                             f"{self.child.stderr.read_text(errors='replace')[-1500:]}") from None
        self.port = int(self._ready().group(1))
        if not accepts(self.port):
            raise BenchError(f"{name} logged ready but does not accept on {self.port}")

    def _ready(self) -> re.Match | None:
        return READY.search(self.child.stderr.read_text(errors="replace"))

    def cpu_seconds(self) -> float:
        return tree_usage(self.child.process.pid).cpu_seconds

    def processes(self) -> int:
        return tree_usage(self.child.process.pid).processes


@dataclass
class ClusterBench:
    """What every measurement shares: the sink, the PostgreSQL server, the mails, the options."""

    workdir: Path
    sink: Sink
    database: DatabaseServer
    mails: dict[str, list[Path]]  # cell.mail → an LF file per smtp-source (Message-IDs differ)
    sender: str
    gateway_options: list[str]
    stall: float
    deadline: float
    runs: int = 0

    def __post_init__(self) -> None:
        os.environ[KEY_ENV] = shared_master_key()

    def measure(self, setup: Setup, cell: Cell) -> Run:
        """One setup, one mail; whatever went wrong is in the run's problems, prefixed by its name."""
        self.runs += 1
        name = f"{self.runs:03d}-{setup.store}-{setup.nodes}x{setup.workers or 'auto'}-{cell.mail}"
        run = Run(setup, cell)
        dsn = self.database.server.create_database() if setup.store != "embedded" else None
        nodes: list[Node] = []
        try:
            options = self._options(setup, dsn)
            for number in range(1, setup.nodes + 1):
                nodes.append(Node(f"{name}-node{number}", self.workdir, options, self.deadline))
            self._load(run, nodes, dsn, name)
            self._stop_and_check(run, nodes, dsn)
        except BenchError as error:
            run.problems.append(str(error))
        finally:
            for node in nodes:
                node.child.stop()
                shutil.rmtree(node.data_dir, ignore_errors=True)  # 60 x 1.5 MB of blobs per 2 MB run
            if dsn is not None:
                self.database.drop(dsn)
        run.problems = [f"{name}: {problem}" for problem in run.problems]
        return run

    def _load(self, run: Run, nodes: list[Node], dsn: str | None, name: str) -> None:
        """smtp-source into the nodes until the sink has them all; time and CPU of that window
        (on PostgreSQL, with a CHECKPOINT at its end: the pages the load dirtied are its cost)."""
        if dsn is not None:
            wal_before, xids_before = self.database.settle()  # the fresh database's pages, before
        gateway_before = sum(node.cpu_seconds() for node in nodes)
        database_before = self.database.cpu_seconds()
        start_count = self.sink.count()
        started = time.monotonic()
        run.problems += self._send(run.setup, run.cell, [node.port for node in nodes], name)
        counted = self.sink.wait_for(start_count + run.cell.messages, self.stall, self.deadline)
        run.seconds = time.monotonic() - started
        time.sleep(0.5)  # a duplicate would arrive now
        at_sink = self.sink.count() - start_count
        if dsn is not None:
            wal_after, xids_after = self.database.settle()
            run.wal_bytes, run.transactions = wal_after - wal_before, xids_after - xids_before
            run.database_cpu = self.database.cpu_seconds() - database_before
        run.gateway_cpu = sum(node.cpu_seconds() for node in nodes) - gateway_before
        run.processes = sum(node.processes() for node in nodes)
        if at_sink != run.cell.messages:
            run.problems.append(f"the sink counted {at_sink} of {run.cell.messages}"
                                + ("" if counted else f" (no progress for {self.stall:.0f} s)"))

    def _options(self, setup: Setup, dsn: str | None) -> list[str]:
        options = list(self.gateway_options)
        if setup.workers is not None:
            options.append(f"gateway.workers={setup.workers}")
        if dsn is not None:
            options += [f"storage.database={dsn}", f"storage.master_key_env={KEY_ENV}"]
        if setup.store == "pg-database":
            options.append("storage.blobs=database")
        return options

    def _send(self, setup: Setup, cell: Cell, ports: list[int], name: str) -> list[str]:
        """smtp-source processes at once, each with its share of the sessions and messages."""
        shares = [Cell(cell.mail, cell.sessions // setup.sources + (i < cell.sessions % setup.sources),
                       cell.messages // setup.sources + (i < cell.messages % setup.sources))
                  for i in range(setup.sources)]
        with ThreadPoolExecutor(setup.sources) as pool:
            sending = [pool.submit(smtp_source, ports[i % len(ports)], share, self.sender,
                                   self.mails[cell.mail][i], self.workdir / f"{name}.{i + 1}.smtp-source",
                                   self.deadline)
                       for i, share in enumerate(shares)]
            return [problem for future in sending for problem in future.result()]

    def _stop_and_check(self, run: Run, nodes: list[Node], dsn: str | None) -> None:
        """Stop the nodes; their logs together must show every message answered 250 once, the
        2 MB ones converted, and the store must hold one committed blob per converted mail."""
        replies: dict[str, int] = {}
        converted = blobs = 0
        for number, node in enumerate(nodes, 1):
            status = node.child.stop()
            node_replies, node_converted, handling, trouble = read_gateway_log(node.child.stderr)
            run.handling_ms += handling
            run.problems += [f"node {number}: {line[:300]}" for line in trouble[:5]]
            if status != 0:
                run.problems.append(f"node {number} exited with status {status}")
            for reply, count in node_replies.items():
                replies[reply] = replies.get(reply, 0) + count
            converted += node_converted
            blobs += data_dir_sizes(node.data_dir)[0]
        if run.setup.store == "pg-database":
            blobs = self.database.committed_blobs(dsn)
        messages, wanted = run.cell.messages, run.cell.messages if run.cell.mail == "2mb" else 0
        if replies != {"250": messages}:
            run.problems.append(f"replies {replies}, wanted {{'250': {messages}}}")
        if converted != wanted or blobs != wanted:
            run.problems.append(f"converted {converted} and stored {blobs} files, wanted {wanted}")
