"""Relay benchmark: the same ~2 MB PPAP mails sent straight to a sink, then through the gateway.

For each concurrency level it runs two paths with the same client, messages and sink:
  reference  client → sink
  gateway    client → `python -m gateway serve` (subprocess, fresh data dir) → sink
and prints messages/s, per-message latency (DATA sent → 250), the latency the gateway adds, its
peak RSS, CPU per message of each process, and gateway/reference throughput — the figure that
survives a shared, noisy machine. Exit status 1 if any message is refused, lost or not stored.

    .venv/bin/python bench/relay_throughput.py [--messages 200] [--concurrency 1,20]
        [--write-docs docs/benchmarks.md] [--profile gateway.pstats]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.policy
import json
import math
import os
import platform
import pstats
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from importlib.metadata import version
from pathlib import Path

import aiosmtplib

from gateway.sample import build_encrypted_zip

ROOT = Path(__file__).resolve().parents[1]

SENDER = "somu@city.example.lg.jp"
RECIPIENT = "tanaka@partner.example.com"
PLACEHOLDER = b"BENCH-PLACEHOLDER-0000000000000"  # same length as the ids that replace it
DOCS_BEGIN = "<!-- relay_throughput:begin -->"
DOCS_END = "<!-- relay_throughput:end -->"
MiB = 1024 * 1024

# Run as the gateway process with --profile: every thread gets its own cProfile measuring that
# thread's CPU time (cProfile alone sees only the main thread, and asyncio.to_thread work runs
# in others); all are merged into one pstats file when the gateway exits.
PROFILED_GATEWAY = """
import cProfile, pstats, sys, threading, time
out, argv = sys.argv[1], sys.argv[2:]
profiles, lock, thread_run = [], threading.Lock(), threading.Thread.run
def profiled_run(self):
    profile = cProfile.Profile(time.thread_time)
    with lock:
        profiles.append(profile)
    profile.runcall(thread_run, self)
threading.Thread.run = profiled_run
from gateway.cli import main
profile = cProfile.Profile(time.thread_time)
profiles.append(profile)
try:
    status = profile.runcall(main, argv)
finally:
    stats = pstats.Stats(profiles[0])
    for other in profiles[1:]:
        stats.add(other)
    stats.dump_stats(out)
sys.exit(status)
"""


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a deadline passed)."""


# -- messages --------------------------------------------------------------------------------


class MessageSource:
    """N distinct PPAP mails from a few ~2 MB templates: only the Message-ID differs.

    Distinct ids keep the gateway's duplicate detection (a fingerprint of envelope and content)
    from answering a repeat without relaying it.
    """

    def __init__(self, templates: int, payload_bytes: int) -> None:
        self._templates = [_build_template(payload_bytes) for _ in range(templates)]
        self._run = secrets.token_hex(4)

    def message(self, index: int) -> bytes:
        unique = f"BENCH-{self._run}-{index:016d}".encode()
        return self._templates[index % len(self._templates)].replace(PLACEHOLDER, unique, 1)

    @property
    def size(self) -> int:
        return len(self._templates[0])


def _build_template(payload_bytes: int) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = "【送付】お見積書の件"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = f"<{PLACEHOLDER.decode()}@city.example.lg.jp>"
    message.set_content(
        "いつもお世話になっております。\n\nお見積書をお送りいたします。\n"
        "パスワードは別途お送りいたします。\n\nよろしくお願いいたします。\n",
        charset="utf-8",
    )
    # Random bytes do not compress: the ZIP stays the payload's size, ~1.37x that in base64.
    archive = build_encrypted_zip({"見積書.pdf": os.urandom(payload_bytes)})
    message.add_attachment(archive, maintype="application", subtype="zip", filename="見積書_2026年11月.zip")
    return message.as_bytes()


# -- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not end in time. Returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def spawn(name: str, command: list[str], workdir: Path) -> Child:
    stdout, stderr = workdir / f"{name}.out", workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k != "PPAP_GATEWAY_MASTER_KEY"}
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=env)
    return Child(name, process, stdout, stderr)


def wait_for_line(child: Child, path: Path, pattern: str, deadline: float) -> re.Match:
    regex = re.compile(pattern)
    give_up = min(deadline, time.monotonic() + 60)
    while time.monotonic() < give_up:
        for line in path.read_text(errors="replace").splitlines():
            if match := regex.search(line):
                return match
        if child.process.poll() is not None:
            raise BenchError(f"{child.name} exited ({child.process.returncode}): {tail(child.stderr)}")
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not print {pattern!r} in time: {tail(child.stderr)}")


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class ProcessUsage:
    cpu_seconds: float
    peak_rss_bytes: int


def process_usage(pid: int) -> ProcessUsage:
    """CPU (user+system) and VmHWM of a live process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    utime, stime = (int(v) for v in stat.rpartition(")")[2].split()[11:13])
    status = Path(f"/proc/{pid}/status").read_text()
    hwm_kb = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))
    return ProcessUsage((utime + stime) / os.sysconf("SC_CLK_TCK"), hwm_kb * 1024)


def usage_since(pid: int, start: ProcessUsage) -> ProcessUsage:
    now = process_usage(pid)
    return ProcessUsage(now.cpu_seconds - start.cpu_seconds, now.peak_rss_bytes)


# -- the sink and the gateway ----------------------------------------------------------------


@dataclass
class SinkReport:
    messages: int
    bytes: int
    connections: int
    usage: ProcessUsage


def start_sink(workdir: Path, deadline: float) -> tuple[Child, int]:
    child = spawn("sink", [sys.executable, str(ROOT / "bench" / "sink.py")], workdir)
    port = int(wait_for_line(child, child.stdout, r"^READY (\d+)$", deadline).group(1))
    return child, port


def stop_sink(child: Child, start: ProcessUsage) -> SinkReport:
    usage = usage_since(child.process.pid, start)
    status = child.stop()
    lines = child.stdout.read_text().splitlines()
    if status != 0 or not lines or not lines[-1].startswith("{"):
        raise BenchError(f"sink ended badly ({status}): {tail(child.stderr)}")
    counts = json.loads(lines[-1])
    return SinkReport(counts["messages"], counts["bytes"], counts["connections"], usage)


def gateway_command(data_dir: Path, sink_port: int, options: list[str], profile: Path | None) -> list[str]:
    overrides = [
        "smtp.listen=127.0.0.1:0",
        "smtp.max_message_size=64MiB",
        f"next_hop.url=smtp://127.0.0.1:{sink_port}",
        "next_hop.starttls=off",
        f"storage.data_dir={data_dir}",
        f"storage.database={data_dir}/gw.sqlite3",
        f"storage.master_key_file={data_dir}/master.key",
        *options,
    ]
    args = ["serve", "--config", str(ROOT / "config" / "gateway.toml")]
    for override in overrides:
        args += ["-o", override]
    if profile is None:
        return [sys.executable, "-m", "gateway", *args]
    return [sys.executable, "-c", PROFILED_GATEWAY, str(profile), *args]


@dataclass
class GatewayReport:
    usage: ProcessUsage
    exit_status: int
    replies: dict[str, int]  # first reply digit group ("250", "451", ...) → count
    converted: int
    handling_ms: list[float]  # the gateway's own time per message, from its log line
    trouble: list[str]  # ERROR/CRITICAL/Traceback lines and unexpected warnings
    blob_files: int
    blob_bytes: int
    database_bytes: int


def read_gateway_log(log: Path) -> tuple[dict[str, int], int, list[float], list[str]]:
    replies: dict[str, int] = {}
    converted, handling, trouble = 0, [], []
    for line in log.read_text(errors="replace").splitlines():
        if "queue_id=" in line:
            reply = (re.search(r"\breply=(\S+)", line) or [None, "?"])[1]
            replies[reply] = replies.get(reply, 0) + 1
            converted += "decision=convert" in line
            if ms := re.search(r"\bms=(\d+)", line):
                handling.append(float(ms.group(1)))
        elif re.search(r" (ERROR|CRITICAL) |Traceback", line) or (
            " WARNING " in line and "no DKIM key" not in line
        ):
            trouble.append(line.strip())
    return replies, converted, handling, trouble


def data_dir_sizes(data_dir: Path) -> tuple[int, int, int]:
    """(blob files, blob bytes, SQLite bytes incl. WAL) under the gateway's data directory."""
    blobs = [p for p in (data_dir / "blobs").rglob("*") if p.is_file() and re.fullmatch(r"[0-9a-f]{32}", p.name)]
    database = sum(p.stat().st_size for p in data_dir.glob("gw.sqlite3*"))
    return len(blobs), sum(p.stat().st_size for p in blobs), database


# -- the client ------------------------------------------------------------------------------


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)  # seconds, DATA sent → 250
    failures: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0


async def connect(port: int, timeout: float) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname="bench.localhost", timeout=timeout, start_tls=False
    )
    await client.connect()
    await client.ehlo()
    return client


async def send_one(client: aiosmtplib.SMTP, data: bytes, result: ClientResult) -> None:
    try:
        # SIZE as every MTA announces it (RFC 1870): the gateway reserves that much of its DATA
        # budget, and a SIZE-less transaction the whole max_message_size.
        await client.mail(SENDER, options=[f"SIZE={len(data)}"])
        await client.rcpt(RECIPIENT)
        started = time.perf_counter()
        await client.data(data)
        result.latencies.append(time.perf_counter() - started)
    except aiosmtplib.SMTPResponseException as refused:
        result.failures.append(f"{refused.code} {refused.message}")
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.rset()
    except aiosmtplib.SMTPException as error:
        result.failures.append(f"{type(error).__name__}: {error}")
        client.close()


async def session_worker(
    port: int, indices: Iterator[int], source: MessageSource, result: ClientResult, timeout: float
) -> None:
    """One SMTP session, reused for every message this worker takes; reconnects after a drop."""
    client: aiosmtplib.SMTP | None = None
    try:
        for index in indices:  # shared by all workers: each index is sent exactly once
            if client is None or not client.is_connected:
                client = await connect(port, timeout)
            await send_one(client, source.message(index), result)
    except (aiosmtplib.SMTPException, OSError) as error:
        result.failures.append(f"session lost: {type(error).__name__}: {error}")
    finally:
        if client is not None and client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
            client.close()


async def run_clients(
    port: int, source: MessageSource, messages: int, concurrency: int, timeout: float
) -> ClientResult:
    result = ClientResult()
    indices = iter(range(messages))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(session_worker(port, indices, source, result, timeout) for _ in range(concurrency))
    )
    result.wall_seconds = time.perf_counter() - wall
    result.cpu_seconds = time.process_time() - cpu
    return result


def drive_clients(port: int, source: MessageSource, args: argparse.Namespace, concurrency: int,
                  deadline: float) -> ClientResult:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BenchError("global timeout reached")
    phase = run_clients(port, source, args.messages, concurrency, args.op_timeout)
    try:
        return asyncio.run(asyncio.wait_for(phase, remaining))
    except TimeoutError:
        raise BenchError(f"global timeout ({args.timeout:g} s) reached while sending") from None


# -- the two paths ---------------------------------------------------------------------------


@dataclass
class Phase:
    path: str  # "reference" | "gateway"
    concurrency: int
    client: ClientResult
    sink: SinkReport
    gateway: GatewayReport | None = None


def run_reference(workdir: Path, source: MessageSource, args, concurrency: int, deadline: float) -> Phase:
    sink, port = start_sink(workdir, deadline)
    try:
        start = process_usage(sink.process.pid)
        client = drive_clients(port, source, args, concurrency, deadline)
        return Phase("reference", concurrency, client, stop_sink(sink, start))
    finally:
        sink.stop()


def run_gateway(workdir: Path, source: MessageSource, args, concurrency: int, deadline: float) -> Phase:
    data_dir = workdir / f"gateway-data-c{concurrency}"
    sink, sink_port = start_sink(workdir, deadline)
    gateway: Child | None = None
    try:
        sink_start = process_usage(sink.process.pid)
        profile = profile_path(args, concurrency)
        command = gateway_command(data_dir, sink_port, args.gateway_option, profile)
        gateway = spawn(f"gateway-c{concurrency}", command, workdir)
        port = int(wait_for_line(gateway, gateway.stderr, r"\bsmtp=\S*:(\d+)(?:\s|$)", deadline).group(1))
        gateway_start = process_usage(gateway.process.pid)
        client = drive_clients(port, source, args, concurrency, deadline)
        gateway_usage = usage_since(gateway.process.pid, gateway_start)
        status = gateway.stop()  # first, so that it says QUIT on its pooled connections to the sink
        sink_report = stop_sink(sink, sink_start)
        replies, converted, handling, trouble = read_gateway_log(gateway.stderr)
        blob_files, blob_bytes, database = data_dir_sizes(data_dir)
        report = GatewayReport(gateway_usage, status, replies, converted, handling, trouble,
                               blob_files, blob_bytes, database)
        return Phase("gateway", concurrency, client, sink_report, report)
    finally:
        if gateway is not None:
            gateway.stop()
        sink.stop()
        shutil.rmtree(data_dir, ignore_errors=True)  # ~N x 1.5 MB; the next level starts afresh


def profile_path(args: argparse.Namespace, concurrency: int) -> Path | None:
    """--profile's file, one per level when there are several (NAME.c20.pstats)."""
    if args.profile is None or len(args.levels) == 1:
        return args.profile
    return args.profile.with_suffix(f".c{concurrency}{args.profile.suffix}")


def problems_of(phase: Phase, messages: int) -> list[str]:
    label = f"{phase.path} c={phase.concurrency}"
    failures = Counter(phase.client.failures).most_common(5)
    found = [f"{label}: {count} x refused or failed: {failure}" for failure, count in failures]
    if len(phase.client.latencies) != messages:
        found.append(f"{label}: {len(phase.client.latencies)} of {messages} messages got 250")
    if phase.sink.messages != messages:
        found.append(f"{label}: sink received {phase.sink.messages} messages, expected {messages}")
    report = phase.gateway
    if report is not None:
        if report.exit_status != 0:
            found.append(f"{label}: gateway exited with status {report.exit_status}")
        if report.replies != {"250": messages}:
            found.append(f"{label}: gateway log replies {report.replies}, expected {{'250': {messages}}}")
        if report.converted != messages:
            found.append(f"{label}: gateway converted {report.converted} of {messages} messages")
        if report.blob_files != messages:
            found.append(f"{label}: gateway stored {report.blob_files} blobs, expected {messages}")
        found += [f"{label}: gateway log: {line[:300]}" for line in report.trouble[:5]]
    return found


# -- the report ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rate(phase: Phase) -> float:
    return len(phase.client.latencies) / phase.client.wall_seconds if phase.client.wall_seconds else 0.0


def ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def per_message_ms(cpu_seconds: float, phase: Phase) -> str:
    return f"{cpu_seconds * 1000 / max(1, len(phase.client.latencies)):.0f}"


def results_table(phases: list[Phase]) -> list[str]:
    reference = {p.concurrency: p for p in phases if p.path == "reference"}
    rows = [
        (
            "| path | sessions | msgs ok | msg/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
            "| gateway peak RSS MiB | CPU ms/msg gateway · sink · client |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for phase in phases:
        lat = phase.client.latencies
        base = reference.get(phase.concurrency)
        added = ("", "")
        if phase.gateway is not None and base is not None:
            added = (ms(percentile(lat, 50) - percentile(base.client.latencies, 50)),
                     ms(percentile(lat, 99) - percentile(base.client.latencies, 99)))
        gw = phase.gateway
        rss = f"{gw.usage.peak_rss_bytes / MiB:.0f}" if gw else ""
        cpu = " · ".join([
            per_message_ms(gw.usage.cpu_seconds, phase) if gw else "–",
            per_message_ms(phase.sink.usage.cpu_seconds, phase),
            per_message_ms(phase.client.cpu_seconds, phase),
        ])
        rows.append(
            f"| {phase.path} | {phase.concurrency} | {len(lat)} | {rate(phase):.1f} "
            f"| {ms(percentile(lat, 50))} | {ms(percentile(lat, 99))} | {added[0]} | {added[1]} | {rss} | {cpu} |"
        )
    return rows


def ratio_lines(phases: list[Phase]) -> list[str]:
    reference = {p.concurrency: p for p in phases if p.path == "reference"}
    lines = []
    for phase in phases:
        base = reference.get(phase.concurrency)
        if phase.gateway is not None and base is not None and rate(base):
            lines.append(
                f"- **gateway / reference throughput at {phase.concurrency} session(s): "
                f"{rate(phase) / rate(base):.2f}** ({rate(phase):.1f} vs {rate(base):.1f} msg/s)"
            )
    return lines


def gateway_lines(phases: list[Phase]) -> list[str]:
    lines = []
    for phase in phases:
        gw = phase.gateway
        if gw is None:
            continue
        lines.append(
            f"- gateway, {phase.concurrency} session(s): own handling time (log `ms`) "
            f"p50 {ms(percentile(gw.handling_ms, 50) / 1000)} ms, p99 {ms(percentile(gw.handling_ms, 99) / 1000)} ms; "
            f"data dir: {gw.blob_files} blobs, {gw.blob_bytes / MiB:.1f} MiB, SQLite {gw.database_bytes / MiB:.1f} MiB; "
            f"sink got {phase.sink.messages} messages of {phase.sink.bytes / max(1, phase.sink.messages) / 1024:.1f} KiB "
            f"on {phase.sink.connections} connection(s); log trouble lines: {len(gw.trouble)}"
        )
    return lines


def filesystem_of(path: Path) -> str:
    best = ("", "?", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[1]):
            best = (device, mount, fstype)
    return f"{best[2]} ({best[0]})"


def machine_line(workdir: Path, packages: tuple[str, ...] = ("aiosmtpd", "aiosmtplib")) -> str:
    """The machine, Python, the versions of `packages` and the file system a run used."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    versions = "".join(f"{name} {version(name)}, " for name in packages)
    return (
        f"nproc {os.cpu_count()} ({model}), Python {platform.python_version()}, Linux {platform.release()}, "
        f"{versions}temp/data dir on {filesystem_of(workdir)}"
    )


def report(phases: list[Phase], source: MessageSource, args, argv: list[str], workdir: Path,
           problems: list[str]) -> str:
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: {machine_line(workdir)}.",
        "",
        f"Command: `.venv/bin/python bench/relay_throughput.py {shlex.join(argv)}`".rstrip() + "  ",
        (
            f"{args.messages} messages per path and level, each {source.size / 1e6:.2f} MB "
            f"(AES-256 ZIP of {args.payload_bytes / 1e6:.2f} MB random bytes, base64), "
            "one external recipient each."
        ),
        "",
        *results_table(phases),
        "",
        *ratio_lines(phases),
        *gateway_lines(phases),
        "",
        "Result: " + ("every message accepted, relayed and stored." if not problems
                      else "PROBLEMS — " + "; ".join(problems[:10])),
    ]
    if args.profile is not None:
        lines.insert(0, "(gateway ran under the per-thread profiler: its figures are slowed down)\n")
    return "\n".join(lines)


def write_docs(path: Path, block: str, markers: tuple[str, str] = (DOCS_BEGIN, DOCS_END)) -> None:
    """Put block between a benchmark's begin and end markers in path (the rest stays)."""
    begin_marker, end_marker = markers
    text = path.read_text()
    before, begin, rest = text.partition(begin_marker)
    _, end, after = rest.partition(end_marker)
    if not begin or not end:
        raise BenchError(f"{path} lacks the markers {begin_marker} … {end_marker}")
    path.write_text(f"{before}{begin_marker}\n{block}\n{end_marker}{after}")


def print_profile(path: Path, top: int = 25) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(15)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="messages per path and level (200)")
    parser.add_argument("--concurrency", default="1,20", help="comma-separated session counts (1,20)")
    parser.add_argument("--payload-bytes", type=int, default=1_500_000,
                        help="random bytes in each ZIP (1500000 → ~2 MB of mail)")
    parser.add_argument("--timeout", type=float, default=1800, help="global time limit, seconds (1800)")
    parser.add_argument("--op-timeout", type=float, default=120, help="per SMTP command, seconds (120)")
    parser.add_argument("--gateway-option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra -o for the gateway (repeatable), e.g. next_hop.pool_size=20")
    parser.add_argument("--write-docs", type=Path, metavar="MD",
                        help="replace the generated block of this file (docs/benchmarks.md)")
    parser.add_argument("--profile", type=Path, metavar="PSTATS",
                        help="run the gateway under a per-thread CPU profiler; write and summarise PSTATS")
    args = parser.parse_args(argv)
    args.levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    if args.messages < 1 or not args.levels or min(args.levels) < 1:
        parser.error("--messages and every --concurrency level must be at least 1")
    if args.profile is not None and args.write_docs is not None:
        parser.error("--profile slows the gateway down: do not combine it with --write-docs")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return args


def run_all(args, workdir: Path, deadline: float) -> tuple[list[Phase], MessageSource]:
    source = MessageSource(min(4, args.messages), args.payload_bytes)
    print(f"messages built: {source.size / 1e6:.2f} MB each", flush=True)
    phases: list[Phase] = []
    for level in args.levels:
        for path, run in (("reference", run_reference), ("gateway", run_gateway)):
            phases.append(run(workdir, source, args, level, deadline))
            print(f"  {path:9} c={level:<3} {rate(phases[-1]):6.1f} msg/s "
                  f"({len(phases[-1].client.latencies)}/{args.messages} ok)", flush=True)
    return phases, source


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as temp:
        workdir = Path(temp)
        try:
            phases, source = run_all(args, workdir, deadline)
        except BenchError as error:
            print(f"relay_throughput: {error}", file=sys.stderr)
            return 1
        problems = [problem for phase in phases for problem in problems_of(phase, args.messages)]
        block = report(phases, source, args, argv, workdir, problems)
    print()
    print(block)
    for level in args.levels if args.profile is not None else ():
        print(f"\n== gateway CPU profile, {level} session(s): {profile_path(args, level)}")
        print_profile(profile_path(args, level))
    if args.write_docs is not None:
        write_docs(args.write_docs, block)
        print(f"\nwrote the generated block of {args.write_docs}")
    if problems:
        print(f"\nrelay_throughput: FAILED, {len(problems)} problem(s) listed above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
