"""Load benchmark with Postfix's own tools, MIMEDefang peer included (issue 14's table and targets).

smtp-source -F (a 2 MB AES-ZIP PPAP mail, a 2 KB plain one; 1 and 20 sessions) → path → smtp-sink,
over five paths (bench/load_paths.py): direct, plain Postfix, Postfix + MIMEDefang
(replace_with_url; bench/peers/mimedefang/), the gateway alone, Postfix → gateway → Postfix
(content_filter, docs/postfix.md). Rounds alternate the order of the paths; each figure is the
median of the rounds. Also: the gateway's CPU per message and peak RSS over its process tree, its
own time per message from its log, the pending-work row (10,000 transfers of the sender waiting, vs
none), the targets with ✓/✗, and a py-spy profile of the gateway. Exit status 1 if any message is
refused, lost or duplicated, or the gateway logs an error.

    .venv/bin/python bench/postfix_load.py [--rounds 3] [--gateway-workers N]
        [--write-docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# Run from bench/ (sys.path[0]): the relay benchmark's process plumbing is shared, not copied.
import load_profile
from load_mails import plain_mail, ppap_mail, write_lf
from load_paths import (
    PATHS,
    SINK_PORT,
    Bench,
    Cell,
    Gateway,
    MimeDefangPeer,
    Sink,
    smtp_source,
)
from load_report import (
    Results,
    gateway_table,
    pending_lines,
    rate_table,
    round_lines,
    target_table,
)
from relay_throughput import BenchError, machine_line, write_docs

from tests.support.postfix import missing_programs, program

SENDER = "hoken@city.example.lg.jp"  # in no department: default policy, no password mails
PENDING_SENDER = "somu@city.example.lg.jp"  # bench/pending_work.py's sender, whose store it fills
DOCS_MARKERS = ("<!-- bench:load:begin -->", "<!-- bench:load:end -->")
# Only the relayed copies reach the sink; all load comes from one client address (the per-client
# session cap is 20 by default). smtp-source announces no SIZE, so the gateway reserves
# max_message_size of its 256 MiB DATA budget per message: 4 MiB admits 64 at once.
GATEWAY_OPTIONS = ["policy.sender_receipt=false", "policy.notify_sender=never",
                   "smtp.max_sessions_per_client=200", "smtp.max_message_size=4MiB"]
MD_MX_OPTS = "-m 10 -q 40"  # all 10 workers kept running, a queue of 40 before them (--md-mx-opts)
MD_OPTS = "-R 0"  # connections from localhost are let in when every worker is busy (--md-opts)
# pending_work.fill dates its transfers up to 10 hours back: a window that holds all of them.
PENDING_OPTIONS = ["policy.password_mail_window=12h"]


def run_rounds(bench: Bench, args: argparse.Namespace, cells: list[Cell]) -> Results:
    runs, pending = [], {}
    for round_ in range(args.rounds):
        paths = args.path_list if round_ % 2 == 0 else args.path_list[::-1]
        for cell in cells:
            for path in paths:
                runs.append(bench.measure(path, cell, SENDER))
                print(f"  round {round_ + 1} {cell.mail} c={cell.sessions:<2} {path:15} "
                      f"{runs[-1].rate:8.1f} msg/s ({runs[-1].at_sink}/{cell.messages} at sink)", flush=True)
        if args.pending:
            cell = Cell("2kb", 20, args.messages_2kb)
            levels = (0, args.pending) if round_ % 2 == 0 else (args.pending, 0)
            options = bench.gateway_options
            bench.gateway_options = [*options, *PENDING_OPTIONS]
            for level in levels:
                pending.setdefault(level, []).append(bench.measure("gateway", cell, PENDING_SENDER, level))
                print(f"  round {round_ + 1} pending {level:<6}          {pending[level][-1].rate:8.1f} msg/s",
                      flush=True)
            bench.gateway_options = options
    return Results(cells, args.path_list, runs, pending, {})


def profile_gateway(bench: Bench, cells: list[Cell]) -> list[str]:
    """One more gateway-alone run per 20-session cell under py-spy (not timed)."""
    if load_profile.py_spy() is None:
        return ["Profile: py-spy is not installed (`.venv/bin/pip install py-spy`)."]
    lines = []
    for cell in (c for c in cells if c.sessions == 20):
        gateway = Gateway(f"profile-{cell.mail}", bench.workdir, SINK_PORT, bench.gateway_options, bench.workers,
                          bench.deadline)
        sampler = load_profile.Sampler(gateway.child.process.pid, bench.workdir / f"profile-{cell.mail}.raw")
        try:
            time.sleep(1)  # py-spy attaches
            smtp_source(gateway.port, cell, SENDER, bench.mails[cell.mail],
                        bench.workdir / f"profile-{cell.mail}.smtp-source", bench.deadline)
        finally:
            sampler.stop()
            gateway.stop()
        profile = load_profile.summarise(sampler.out)
        lines += [*load_profile.markdown(f"Gateway alone, {cell.messages} × {cell.mail.upper()} mail, "
                                         f"{cell.sessions} sessions", profile), ""]
    return lines


def report(results: Results, args: argparse.Namespace, argv: list[str], workdir: Path,
           profile: list[str]) -> str:
    problems = [p for m in [*results.runs, *(m for ms in results.pending.values() for m in ms)] for p in m.problems]
    workers = f"`-o gateway.workers={args.gateway_workers}`" if args.gateway_workers else "its default worker count"
    return "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: {machine_line(workdir)}.",
        "",
        f"Command: `.venv/bin/python bench/postfix_load.py {shlex.join(argv)}`".rstrip() + "  ",
        (f"One `smtp-source -s SESSIONS -m N -d -N -F FILE` per measurement (the file's header and body as "
         f"they are; -N: each recipient numbered) → path → `smtp-sink -c` on :10226; msgs/s = N / "
         f"(start → the sink counted the N-th), median of {args.rounds} rounds, the paths' order reversed "
         f"every other round. N = {args.messages_2mb} (2 MB: {results.mail_bytes['2mb']:,} bytes, "
         f"AES-256 ZIP of 1.5 MB seeded random bytes, bench/load_mails.py) or {args.messages_2kb} "
         f"(2 KB plain: {results.mail_bytes['2kb']:,} bytes). Gateway: `config/gateway.toml` with "
         f"`-o {' -o '.join(GATEWAY_OPTIONS)}`, {workers}, fresh data directory per measurement. "
         f"MIMEDefang: bench/peers/mimedefang/md_ctl.sh with `MX_OPTS='{args.md_mx_opts}' "
         f"MD_OPTS='{args.md_opts}'` (--md-mx-opts, --md-opts: without them it tempfails at 20 sessions)."),
        "",
        *rate_table(results),
        "",
        *gateway_table(results),
        "",
        (f"Pending work: the same 2 KB mail from `{PENDING_SENDER}`, whose store was first filled by "
         f"`bench/pending_work.py`'s `fill` with {args.pending:,} transfers waiting for a password "
         f"(each linked to another recipient; `-o {PENDING_OPTIONS[0]}` so all are inside the window), "
         "vs an empty store, restarted the same way:") if args.pending else "",
        "",
        *pending_lines(results),
        "",
        *target_table(results),
        "",
        "Every round (msgs/s, in run order):",
        *round_lines(results),
        "",
        *profile,
        "Result: " + ("every message accepted and counted once at the sink; gateway log clean."
                      if not problems else "PROBLEMS — " + "; ".join(problems[:10])),
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are their medians (3)")
    parser.add_argument("--sessions", default="1,20", help="comma-separated session counts (1,20)")
    parser.add_argument("--messages-2mb", type=int, default=100, help="2 MB mails per measurement (100)")
    parser.add_argument("--messages-2kb", type=int, default=1000, help="2 KB mails per measurement (1000)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"some of {','.join(PATHS)} (all)")
    parser.add_argument("--pending", type=int, default=10_000,
                        help="transfers pending for the pending-work row; 0 leaves it out (10000)")
    parser.add_argument("--gateway-workers", type=int, metavar="N",
                        help="passed as -o gateway.workers=N (only when given)")
    parser.add_argument("--gateway-option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra -o for the gateway (repeatable)")
    # As md_ctl.sh starts it (-m 2 -x 10, no queue, -R -1), MIMEDefang tempfails (451, which ends
    # smtp-source) a connection or a message that finds no free worker: at 20 sessions, and while
    # it starts workers after a quiet spell. With the same 10 workers kept running (-m 10), a
    # request queue (-q 40) and local connections let in when all are busy (-R 0), 20 sessions
    # wait for a worker instead.
    parser.add_argument("--md-mx-opts", default=MD_MX_OPTS,
                        help=f"MX_OPTS for md_ctl.sh, extra mimedefang-multiplexor options ({MD_MX_OPTS!r})")
    parser.add_argument("--md-opts", default=MD_OPTS,
                        help=f"MD_OPTS for md_ctl.sh, extra mimedefang (milter) options ({MD_OPTS!r})")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile runs")
    parser.add_argument("--stall", type=float, default=60,
                        help="give up on a measurement when the sink's count has not moved for this long (60)")
    parser.add_argument("--timeout", type=float, default=3600, help="global time limit, seconds (3600)")
    parser.add_argument("--write-docs", type=Path, metavar="MD",
                        help="replace the bench:load block of this file (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    args.levels = [int(s) for s in args.sessions.split(",") if s.strip()]
    args.path_list = [p for p in args.paths.split(",") if p]
    if args.rounds < 1 or not args.levels or min(args.levels) < 1 or min(args.messages_2mb, args.messages_2kb) < 1:
        parser.error("--rounds, --sessions and --messages-* must be at least 1")
    if not args.path_list or not set(args.path_list) <= set(PATHS):
        parser.error(f"--paths: some of {', '.join(PATHS)}")
    return args


def missing() -> str | None:
    if reason := missing_programs():
        return reason
    if program("mimedefang-multiplexor") is None:
        return "not installed: mimedefang; `make bench-deps` installs it (Debian mimedefang, libarchive-zip-perl)"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if reason := missing():
        print(f"postfix_load: {reason}", file=sys.stderr)
        return 1
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop the sink, the peer and the gateway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = time.monotonic() + args.timeout
    cells = [Cell(mail, sessions, args.messages_2mb if mail == "2mb" else args.messages_2kb)
             for mail in ("2mb", "2kb") for sessions in args.levels]
    with tempfile.TemporaryDirectory(prefix="postfix-load-") as temp:
        workdir = Path(temp)
        workdir.chmod(0o755)  # the peer's Postfix and MIMEDefang (users postfix, defang) work below it
        mails = {"2mb": write_lf(workdir / "2mb.eml", ppap_mail(SENDER)),
                 "2kb": write_lf(workdir / "2kb.eml", plain_mail(SENDER))}
        peer = MimeDefangPeer(workdir / "peer", args.md_mx_opts, args.md_opts)
        sink: Sink | None = None
        try:
            sink = Sink(workdir, deadline)
            if {"postfix", "postfix+md"} & set(args.path_list):
                peer.start(deadline)
            bench = Bench(workdir, sink, mails, [*GATEWAY_OPTIONS, *args.gateway_option],
                          args.gateway_workers, args.stall, deadline)
            results = run_rounds(bench, args, cells)
            # the bytes smtp-source sends: every LF line becomes CRLF
            results.mail_bytes = {k: len(p.read_bytes().replace(b"\n", b"\r\n")) for k, p in mails.items()}
            profile = [] if args.no_profile else profile_gateway(bench, cells)
        except BenchError as error:
            print(f"postfix_load: {error}", file=sys.stderr)
            return 1
        finally:
            peer.stop()
            if sink is not None:
                sink.stop()
        block = report(results, args, argv, workdir, profile)
    print()
    print(block)
    if args.write_docs is not None:
        write_docs(args.write_docs, block, DOCS_MARKERS)
        print(f"\nwrote the bench:load block of {args.write_docs}")
    problems = [p for m in [*results.runs, *(m for ms in results.pending.values() for m in ms)] for p in m.problems]
    if problems:
        print(f"\npostfix_load: FAILED, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
