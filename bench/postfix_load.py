"""Load benchmark with Postfix's own tools: smtp-source → {nothing | Postfix | gateway | both} → smtp-sink.

For each session count (20 and 100 by default) it sends the same mixed load (half the corpus mail
without an attachment, half the Outlook mail with an AES ZIP) over four paths, each into a fresh
smtp-sink:
  direct           smtp-source → smtp-sink
  postfix          smtp-source → plain Postfix relay (private instance, tests/support/postfix.py) → smtp-sink
  gateway          smtp-source → `python -m gateway serve` (subprocess, fresh data dir) → smtp-sink
  postfix+gateway  smtp-source → Postfix set up as in docs/postfix.md (content_filter → gateway →
                   re-injection) → smtp-sink
and prints a Markdown table: messages/s (first connection → last message at the sink), the
gateway's peak RSS (VmHWM) and CPU per message. Exit status 1 if any message is refused, lost or
duplicated, or the gateway logs an error.

    .venv/bin/python bench/postfix_load.py [--messages 1000] [--concurrency 20,100]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Run from bench/ (sys.path[0]): the relay benchmark's process plumbing is shared, not copied.
from relay_throughput import (
    ROOT,
    BenchError,
    Child,
    data_dir_sizes,
    gateway_command,
    machine_line,
    process_usage,
    read_gateway_log,
    spawn,
    usage_since,
    wait_for_line,
)

sys.path.insert(0, str(ROOT))  # for tests.support.postfix: the private-instance code the tests use
from tests.support.postfix import PostfixInstance, free_port, missing_programs, program

SENDER = "hoken@city.example.lg.jp"  # in no department: default policy, no password mails
KINDS = {"plain": "13_no_attachment", "zip": "01_outlook_jis_aes256"}
PATHS = ("direct", "postfix", "gateway", "postfix+gateway")
MiB = 1024 * 1024
# Only the relayed copies reach the sink; every listener on a free port; all load comes from one
# client address, so the per-client session cap (20 by default) must allow the 100-session level.
# smtp-source announces no SIZE, so the gateway reserves max_message_size of its DATA budget for
# each message in transit: at 1 MiB (the mails are ~15 kB) the 256 MiB budget admits 256 at once.
GATEWAY_OPTIONS = ["policy.sender_receipt=false", "policy.notify_sender=never",
                   "portal.listen=127.0.0.1:0", "admin.listen=127.0.0.1:0",
                   "smtp.max_sessions_per_client=200", "smtp.max_message_size=1MiB"]


@dataclass
class PathResult:
    path: str
    sessions: int
    messages: int
    accepted_seconds: float = 0.0  # until every smtp-source had its last reply
    delivered_seconds: float = 0.0  # until the sink counted every message
    at_sink: int = 0
    gateway_peak_rss: int | None = None
    gateway_cpu_seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.delivered_seconds if self.delivered_seconds else 0.0


# -- the load and the sink -------------------------------------------------------------------


def lf_copies(workdir: Path) -> dict[str, Path]:
    """Corpus mails with LF line ends: smtp-source adds CRLF to every line it reads."""
    copies = {}
    for kind, name in KINDS.items():
        copies[kind] = workdir / f"{kind}.eml"
        copies[kind].write_bytes((ROOT / "tests" / "corpus" / "mail" / f"{name}.eml").read_bytes()
                                 .replace(b"\r\n", b"\n"))
    return copies


def start_smtp_sink(workdir: Path, name: str, deadline: float) -> tuple[Child, int]:
    port = free_port()
    user = ["-u", "postfix"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
    child = spawn(name, [program("smtp-sink") or "smtp-sink", *user, "-c", f"127.0.0.1:{port}", "1024"],
                  workdir)
    while not _accepts(port):
        if child.process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"smtp-sink did not start: {child.stdout.read_text(errors='replace')}")
        time.sleep(0.05)
    return child, port


def sink_count(sink: Child) -> int:
    """smtp-sink -c rewrites one `sess=N quit=N mesg=N` counter line with CR after each event."""
    counts = re.findall(r"mesg=(\d+)", sink.stdout.read_text(errors="replace"))
    return int(counts[-1]) if counts else 0


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def run_load(port: int, sessions: int, messages: int, mails: dict[str, Path], workdir: Path,
             deadline: float) -> list[str]:
    """Two smtp-source processes at once, half the sessions and messages each; their failures."""
    processes = []
    for index, (kind, eml) in enumerate(mails.items()):
        share = messages // 2 + (messages % 2 if index == 0 else 0)
        command = [program("smtp-source") or "smtp-source", "-s", str(max(1, sessions // 2)),
                   "-m", str(share), "-N", "-d", "-M", "bench.test", "-f", SENDER,
                   "-t", f"{kind}@partner.example.com", "-F", str(eml), f"127.0.0.1:{port}"]
        with open(workdir / f"smtp-source-{kind}.out", "wb") as out:  # the child keeps its own copy
            processes.append((kind, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)))
    failures = []
    for kind, process in processes:
        try:
            process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode != 0:
            text = (workdir / f"smtp-source-{kind}.out").read_text(errors="replace")[-500:]
            failures.append(f"smtp-source ({kind}) exited {process.returncode}: {text.strip()}")
    return failures


def wait_for_sink(sink: Child, messages: int, stall: float, deadline: float) -> None:
    """Until the sink has counted every message, or its count has not moved for `stall` seconds."""
    last, moved = sink_count(sink), time.monotonic()
    while last < messages and time.monotonic() < deadline and time.monotonic() - moved < stall:
        time.sleep(0.05)
        if (count := sink_count(sink)) != last:
            last, moved = count, time.monotonic()


# -- one path --------------------------------------------------------------------------------


def run_path(path: str, sessions: int, args: argparse.Namespace, mails: dict[str, Path],
             workdir: Path, deadline: float) -> PathResult:
    result = PathResult(path, sessions, args.messages)
    sink, sink_port = start_smtp_sink(workdir, f"smtp-sink-{path}-c{sessions}", deadline)
    relay: PostfixInstance | None = None
    gateway: Child | None = None
    data_dir = workdir / f"gateway-data-{path}-c{sessions}"
    try:
        port = sink_port
        if path == "postfix":
            relay = PostfixInstance.relay(deliver_port=sink_port).start()
            port = relay.listen_port
        elif path in ("gateway", "postfix+gateway"):
            reinject_port = free_port() if path == "postfix+gateway" else sink_port
            command = gateway_command(data_dir, reinject_port, GATEWAY_OPTIONS, None)
            gateway = spawn(f"gateway-{path}-c{sessions}", command, workdir)
            port = int(wait_for_line(gateway, gateway.stderr, r"\bsmtp=\S*:(\d+)(?:\s|$)", deadline).group(1))
            if path == "postfix+gateway":  # docs/postfix.md's set-up: content_filter and re-injection
                relay = PostfixInstance.in_front(port, sink_port, reinject_port=reinject_port).start()
                port = relay.listen_port
        gateway_start = process_usage(gateway.process.pid) if gateway else None
        started = time.monotonic()
        result.problems += run_load(port, sessions, args.messages, mails, workdir, deadline)
        result.accepted_seconds = time.monotonic() - started
        wait_for_sink(sink, args.messages, args.stall, deadline)
        result.delivered_seconds = time.monotonic() - started
        time.sleep(args.settle)  # a duplicate would arrive now
        result.at_sink = sink_count(sink)
        if gateway is not None and gateway_start is not None:
            usage = usage_since(gateway.process.pid, gateway_start)
            result.gateway_peak_rss, result.gateway_cpu_seconds = usage.peak_rss_bytes, usage.cpu_seconds
            result.problems += gateway_problems(gateway, data_dir, args.messages)
            gateway = None
    finally:
        if gateway is not None:
            gateway.stop()
        if relay is not None:
            relay.stop()
        sink.stop()
    if result.at_sink != args.messages:
        result.problems.append(f"{path} c={sessions}: the sink counted {result.at_sink} of {args.messages}")
    return result


def gateway_problems(gateway: Child, data_dir: Path, messages: int) -> list[str]:
    status = gateway.stop()
    replies, converted, _, trouble = read_gateway_log(gateway.stderr)
    blobs, _, _ = data_dir_sizes(data_dir)
    zips = messages // 2
    problems = [f"gateway: {line}" for line in trouble[:5]]
    if status != 0:
        problems.append(f"gateway exited with status {status}")
    if replies != {"250": messages}:
        problems.append(f"gateway replies {replies}, wanted {{'250': {messages}}}")
    if converted != zips or blobs != zips:
        problems.append(f"gateway converted {converted} and stored {blobs} files, wanted {zips}")
    return problems


# -- report ----------------------------------------------------------------------------------


def table(results: list[PathResult]) -> list[str]:
    lines = [("| path | sessions | messages | at sink | accepted in s | delivered in s | messages/s "
              "| gateway peak RSS MiB | gateway CPU ms/msg |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rss = f"{r.gateway_peak_rss / MiB:.0f}" if r.gateway_peak_rss else "—"
        cpu = f"{1000 * r.gateway_cpu_seconds / r.messages:.1f}" if r.gateway_cpu_seconds else "—"
        lines.append(f"| {r.path} | {r.sessions} | {r.messages} | {r.at_sink} | {r.accepted_seconds:.1f} "
                     f"| {r.delivered_seconds:.1f} | {r.rate:.0f} | {rss} | {cpu} |")
    return lines


def report(results: list[PathResult], argv: list[str], workdir: Path) -> str:
    problems = [p for r in results for p in r.problems]
    return "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: {machine_line(workdir)}.",
        "",
        f"Command: `.venv/bin/python bench/postfix_load.py {shlex.join(argv)}`".rstrip() + "  ",
        ("Load: two smtp-source processes at once (half the sessions each, `-d -N`), one sending "
         f"`{KINDS['plain']}.eml`, the other `{KINDS['zip']}.eml` (AES ZIP: converted by the gateway)."),
        "",
        *table(results),
        "",
        "Result: " + ("every message accepted and counted once at the sink; gateway log clean."
                      if not problems else "PROBLEMS — " + "; ".join(problems[:10])),
    ])


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per path and level (1000)")
    parser.add_argument("--concurrency", default="20,100", help="comma-separated session counts (20,100)")
    parser.add_argument("--paths", default=",".join(PATHS), help="which paths (all four)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait for stragglers (1)")
    parser.add_argument("--stall", type=float, default=60,
                        help="give up on a path when the sink's count has not moved for this long (60)")
    parser.add_argument("--timeout", type=float, default=1800, help="global time limit, seconds (1800)")
    args = parser.parse_args(argv)
    args.levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    args.path_list = [p for p in args.paths.split(",") if p]
    if args.messages < 2 or not args.levels or min(args.levels) < 2:
        parser.error("--messages and every --concurrency level must be at least 2 (two smtp-sources)")
    if not args.path_list or not set(args.path_list) <= set(PATHS):
        parser.error(f"--paths: some of {', '.join(PATHS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if reason := missing_programs():
        print(f"postfix_load: {reason}", file=sys.stderr)
        return 1
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop the sink, Postfix and the gateway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="postfix-load-") as temp:
        workdir = Path(temp)
        mails = lf_copies(workdir)
        results = []
        try:
            for sessions in args.levels:
                for path in args.path_list:
                    results.append(run_path(path, sessions, args, mails, workdir, deadline))
                    print(f"  {path:8} c={sessions:<3} {results[-1].rate:6.0f} msg/s "
                          f"({results[-1].at_sink}/{args.messages} at sink)", flush=True)
        except BenchError as error:
            print(f"postfix_load: {error}", file=sys.stderr)
            return 1
        block = report(results, argv, workdir)
    print()
    print(block)
    problems = [p for r in results for p in r.problems]
    if problems:
        print(f"\npostfix_load: FAILED, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
