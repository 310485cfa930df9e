"""Cluster benchmark (issue 15 point 6): what the clustered store costs per message against the
embedded one, and two nodes against one, on this machine, in one run.

A. smtp-source (20 sessions, -d -N -F) → one `serve` (default workers) → smtp-sink, for the 2 MB
   PPAP mail and the 2 KB plain one, on three stores: SQLite + local directory (embedded),
   PostgreSQL + local directory, PostgreSQL with the blobs in it.
B. Blobs in PostgreSQL: one node with 2 workers against two nodes with 1 worker each (a shared
   master key in the environment), two smtp-source processes of 10 sessions and half the messages
   each, pointed at the one node or one at each node.

Per measurement (bench/cluster_nodes.py): msgs/s; per message the nodes' CPU, the PostgreSQL
server's (postmaster tree), its write transactions and WAL; the gateway's own time from its log.
Medians of the rounds, whose order of configurations alternates. A broken measurement shows its
problem instead of a figure, and the exit status is 1.

    .venv/bin/python bench/cluster_load.py [--messages-2mb 60] [--messages-2kb 600] [--rounds 3]
        [--write-docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import shlex
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cluster_nodes import ClusterBench, DatabaseServer, Run, Setup
from load_mails import plain_mail, ppap_mail, write_lf
from load_paths import Cell, Sink
from relay_throughput import BenchError, machine_line, percentile, write_docs

from tests.support.postfix import missing_programs
from tests.support.postgres import PostgresNotInstalled, PostgresServer

SENDER = "hoken@city.example.lg.jp"  # in no department: default policy, no password mails
DOCS_MARKERS = ("<!-- bench:cluster:begin -->", "<!-- bench:cluster:end -->")
# As bench/postfix_load.py: only relayed copies reach the sink, all load comes from 127.0.0.1,
# and smtp-source announces no SIZE (each message reserves max_message_size of the DATA budget).
GATEWAY_OPTIONS = ["policy.sender_receipt=false", "policy.notify_sender=never",
                   "smtp.max_sessions_per_client=200", "smtp.max_message_size=4MiB"]
STORES = [Setup("SQLite + local directory (embedded)", "embedded"),
          Setup("PostgreSQL + local directory", "pg-directory"),
          Setup("PostgreSQL + blobs in PostgreSQL", "pg-database")]
NODES = [Setup("one node, 2 workers", "pg-database", nodes=1, workers=2, sources=2),
         Setup("two nodes, 1 worker each", "pg-database", nodes=2, workers=1, sources=2)]
MAIL_LABEL = {"2mb": "2 MB, AES ZIP", "2kb": "2 KB plain"}


def run_rounds(bench: ClusterBench, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for round_ in range(args.rounds):
        for mail in ("2mb", "2kb"):
            cell = Cell(mail, args.sessions, args.messages_2mb if mail == "2mb" else args.messages_2kb)
            for part in (STORES, NODES):
                for setup in part if round_ % 2 == 0 else part[::-1]:
                    if time.monotonic() > bench.deadline:
                        raise BenchError(f"--timeout reached after {len(runs)} measurements")
                    runs.append(run := bench.measure(setup, cell))
                    shown = (f"BROKEN: {_one_line(run.problems[0])}" if run.problems else
                             f"{run.rate:8.1f} msg/s, CPU {run.per_message_ms(run.cpu_seconds):6.2f} ms/msg")
                    print(f"  round {round_ + 1} {mail} {setup.label:38} {shown}", flush=True)
    return runs


# -- the report ---------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or not base else f"{value / base:.2f}×"


def summary(runs: list[Run]) -> dict[str, float | None] | None:
    """Medians over the clean rounds of one setup and mail; None if no round was clean."""
    clean = [r for r in runs if not r.problems]
    if not clean:
        return None
    handling = [ms for r in clean for ms in r.handling_ms]
    return {
        "rate": _median([r.rate for r in clean]),
        "gateway": _median([r.per_message_ms(r.gateway_cpu) for r in clean]),
        "database": _median([r.per_message_ms(r.database_cpu) for r in clean]),
        "total": _median([r.per_message_ms(r.cpu_seconds) for r in clean]),
        "transactions": _median([None if r.transactions is None else r.transactions / r.cell.messages
                                 for r in clean]),
        "wal_kb": _median([None if r.wal_bytes is None else r.wal_bytes / 1000 / r.cell.messages for r in clean]),
        "p50": percentile(handling, 50) if handling else None,
        "p99": percentile(handling, 99) if handling else None,
        "processes": max(r.processes for r in clean),
        "clean": len(clean),
    }


def _one_line(text: str, limit: int = 200) -> str:
    """A problem as a table cell or a list item: one line, no column bar, not too long."""
    return " ".join(text.split()).replace("|", "/")[:limit]


def table(runs: list[Run], setups: list[Setup], first: str, against: str) -> list[str]:
    """One row per mail and setup, its ratios against the first setup of the same mail."""
    lines = [(f"| mail | {first} | msgs/s | gateway CPU ms/msg | PostgreSQL CPU ms/msg | sum ms/msg "
              "| PostgreSQL write transactions/msg | WAL kB/msg | own time p50 / p99 ms (log `ms`) "
              f"| gateway processes | msgs/s ÷ {against} | CPU sum ÷ {against} |"),
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for mail in ("2mb", "2kb"):
        measured = {setup: [r for r in runs if r.setup == setup and r.cell.mail == mail] for setup in setups}
        rows = {setup: summary(mine) for setup, mine in measured.items() if mine}
        base = rows.get(setups[0]) or {}
        for setup, row in rows.items():
            mine = measured[setup]
            if row is None:
                lines.append(f"| {MAIL_LABEL[mail]} | {setup.label} | broken: {_one_line(mine[0].problems[0])} "
                             "| | | | | | | | | |")
                continue
            rounds = "" if row["clean"] == len(mine) else f" ({row['clean']} of {len(mine)} rounds clean)"
            lines.append(
                f"| {MAIL_LABEL[mail]} | {setup.label}{rounds} | {_num(row['rate'], 1 if mail == '2mb' else 0)} "
                f"| {_num(row['gateway'], 2)} | {_num(row['database'], 2)} | {_num(row['total'], 2)} "
                f"| {_num(row['transactions'], 1)} | {_num(row['wal_kb'], 1)} "
                f"| {_num(row['p50'], 0)} / {_num(row['p99'], 0)} | {row['processes']} "
                f"| {_ratio(row['rate'], base.get('rate'))} | {_ratio(row['total'], base.get('total'))} |")
    return lines


def round_lines(runs: list[Run], setups: list[Setup]) -> list[str]:
    """Every round's msgs/s in run order, or what broke it, so the spread behind a median shows."""
    lines = []
    for mail in ("2mb", "2kb"):
        digits = 1 if mail == "2mb" else 0
        parts = [f"{setup.label} " + ", ".join("broken" if r.problems else f"{r.rate:.{digits}f}"
                                                for r in runs if r.setup == setup and r.cell.mail == mail)
                 for setup in setups]
        lines.append(f"- {MAIL_LABEL[mail]}: " + "; ".join(parts))
    return lines


def report(runs: list[Run], args: argparse.Namespace, argv: list[str], workdir: Path,
           database: DatabaseServer, mail_bytes: dict[str, int]) -> str:
    problems = [p for r in runs for p in r.problems]
    return "\n".join([
        (f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: "
         f"{machine_line(workdir, ('aiosmtpd', 'aiosmtplib', 'psycopg'))}, PostgreSQL {database.version}."),
        "",
        f"Command: `.venv/bin/python bench/cluster_load.py {shlex.join(argv)}`".rstrip() + "  ",
        (f"`smtp-source -s S -m N -d -N -F FILE` (S = {args.sessions}; in B two of them, S/2 sessions and N/2 "
         f"messages each) → gateway → `smtp-sink -c`; msgs/s = N / (start → the sink counted the N-th), "
         f"median of {args.rounds} rounds, the configurations' order reversed every other round. "
         f"N = {args.messages_2mb} (2 MB: {mail_bytes['2mb']:,} bytes, AES-256 ZIP, bench/load_mails.py) "
         f"or {args.messages_2kb} (2 KB plain: {mail_bytes['2kb']:,} bytes). Gateway: `config/gateway.toml` with "
         f"`-o {' -o '.join(GATEWAY_OPTIONS)}`, a fresh data directory per node and, on PostgreSQL, a fresh "
         "database per measurement. PostgreSQL: one private server for the run (tests/support/postgres.py: "
         "fsync on, synchronous_commit on, shared_buffers 32 MB, TCP on 127.0.0.1). CPU = utime + stime over "
         "the nodes' process trees, and over the postmaster's (every backend, the checkpointer, the WAL "
         "writer) including a CHECKPOINT after the load; write transactions = transaction ids the server "
         "handed out, WAL = its insert position moved, over the same window; own time = the gateway's log "
         "`ms`, end of DATA → its reply."),
        "",
        f"A. Per-message cost of the store, one node (its default workers), {args.sessions} sessions:",
        "",
        *table(runs, STORES, "store", "embedded"),
        "",
        "B. Blobs in PostgreSQL, two nodes against one, the same number of worker processes:",
        "",
        *table(runs, NODES, "nodes", "one node"),
        "",
        "Every round (msgs/s, in run order):",
        *round_lines(runs, STORES + NODES),
        "",
        "Result: " + ("every message answered 250 and counted once at the sink; every PPAP mail "
                      "converted and its file stored; gateway logs clean."
                      if not problems else "PROBLEMS — " + "; ".join(_one_line(p, 400) for p in problems[:10])),
    ])


# -- the command --------------------------------------------------------------------------------


def source_copy(mail: bytes, source: int) -> bytes:
    """The mail as smtp-source number `source` sends it: its own Message-ID (same length). Two
    smtp-source processes number their recipients alike, so with the same bytes their messages
    would be one message retried to the gateway, refused (451) while its twin is relayed."""
    copy = mail.replace(b"<bench-load-", f"<bench-src{source}-".encode(), 1)
    assert copy != mail and len(copy) == len(mail), "load_mails' Message-ID changed"
    return copy


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are their medians (3)")
    parser.add_argument("--messages-2mb", type=int, default=60, help="2 MB mails per measurement (60)")
    parser.add_argument("--messages-2kb", type=int, default=600, help="2 KB mails per measurement (600)")
    parser.add_argument("--sessions", type=int, default=20, help="SMTP sessions at once (20; split in B)")
    parser.add_argument("--gateway-option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra -o for every node (repeatable)")
    parser.add_argument("--stall", type=float, default=60,
                        help="give up on a measurement when the sink's count has not moved for this long (60)")
    parser.add_argument("--timeout", type=float, default=2400, help="global time limit, seconds (2400)")
    parser.add_argument("--write-docs", type=Path, metavar="MD",
                        help="replace the bench:cluster block of this file (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or min(args.messages_2mb, args.messages_2kb) < 2 or args.sessions < 2:
        parser.error("--rounds must be at least 1, --sessions and --messages-* at least 2 (B splits them)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if reason := missing_programs():
        print(f"cluster_load: {reason}", file=sys.stderr)
        return 1
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop the sink, the nodes and PostgreSQL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="cluster-load-") as temp:
        workdir = Path(temp)
        workdir.chmod(0o755)  # smtp-sink runs as postfix below it
        mails = {name: [write_lf(workdir / f"{name}-{i}.eml", source_copy(mail, i)) for i in (1, 2)]
                 for name, mail in (("2mb", ppap_mail(SENDER)), ("2kb", plain_mail(SENDER)))}
        sink: Sink | None = None
        try:
            with PostgresServer(workdir) as server:
                database = DatabaseServer(server)
                sink = Sink(workdir, deadline)
                bench = ClusterBench(workdir, sink, database, mails, SENDER,
                                     [*GATEWAY_OPTIONS, *args.gateway_option], args.stall, deadline)
                runs = run_rounds(bench, args)
                # the bytes smtp-source sends: every LF line becomes CRLF
                mail_bytes = {k: len(p[0].read_bytes().replace(b"\n", b"\r\n")) for k, p in mails.items()}
                block = report(runs, args, argv, workdir, database, mail_bytes)
        except (BenchError, PostgresNotInstalled) as error:
            print(f"cluster_load: {error}", file=sys.stderr)
            return 1
        finally:
            if sink is not None:
                sink.stop()
    print()
    print(block)
    if args.write_docs is not None:
        write_docs(args.write_docs, block, DOCS_MARKERS)
        print(f"\nwrote the bench:cluster block of {args.write_docs}")
    if problems := [p for r in runs for p in r.problems]:
        print(f"\ncluster_load: FAILED, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
