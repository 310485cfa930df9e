"""Download benchmark: one large file fetched by many concurrent clients from a plain static
file server, then from the gateway's download portal, in the same run.

  reference  aiohttp `web.FileResponse` serving the plaintext file (its own process)
  portal     `python -m gateway serve` (its own process) over a data dir prepared with one
             transfer and one active link; each download is the real flow: GET the landing
             page, take the CSRF token and the file's form action, POST, stream the body

One client process (aiohttp, N concurrent tasks) hashes every body and checks it against the
original. It prints total MB/s, per-download time p50/p99, each server's peak RSS (VmHWM) and
CPU, and portal/reference throughput. Exit status 1 on any failed or wrong download.

    .venv/bin/python bench/download_throughput.py [--clients 50] [--size-mb 20] [--rounds 2]
        [--write-docs docs/benchmarks.md] [--profile portal.pstats]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp

# Run from bench/ (sys.path[0]): the relay benchmark's process plumbing is shared, not copied.
from relay_throughput import (
    PROFILED_GATEWAY,
    ROOT,
    BenchError,
    Child,
    machine_line,
    percentile,
    print_profile,
    process_usage,
    spawn,
    usage_since,
    wait_for_line,
    write_docs,
)

from gateway.store.blobs import BlobStore
from gateway.store.db import Database
from gateway.store.keys import load_or_create_master_key
from gateway.store.passwords import hash_token, new_token

DOCS_BEGIN = "<!-- download_throughput:begin -->"
DOCS_END = "<!-- download_throughput:end -->"
PACKAGES = ("aiohttp", "cryptography")  # the versions a run reports
MiB = 1024 * 1024
READ_SIZE = 64 * 1024  # the client reads the body in pieces of at most this
FILE_NAME = "見積書_2026年11月.pdf"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
FILE_ACTION = re.compile(r'<form method="post" action="([^"]*/f/[^"]+)"')

# The reference server: a few lines of aiohttp, run with `python -c CODE FILE`.
STATIC_SERVER = """
import asyncio, sys
from aiohttp import web
path = sys.argv[1]
async def serve(request):
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
async def main():
    app = web.Application()
    app.router.add_get("/file", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print("READY", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


# -- what is served ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    path: Path
    size: int
    sha256: str


def write_payload(path: Path, size: int) -> Payload:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for start in range(0, size, MiB):
            piece = os.urandom(min(MiB, size - start))
            digest.update(piece)
            out.write(piece)
    return Payload(path, size, digest.hexdigest())


def prepare_store(data_dir: Path, payload: Payload, chunk_size: int) -> str:
    """One active transfer with the payload as its one file and one unlimited link, stored as
    pipeline/store_step.py stores them; returns the link's token."""
    master_key = load_or_create_master_key(data_dir / "master.key", None)
    blobs = BlobStore(data_dir / "blobs", master_key, chunk_size)
    with open(payload.path, "rb") as source:
        info = blobs.write(iter(lambda: source.read(chunk_size), b""))
    if info.sha256 != payload.sha256:
        raise BenchError("the stored blob's SHA-256 differs from the payload's")
    now, token = datetime.now(UTC), new_token()
    db = Database(data_dir / "gateway.sqlite3")
    try:
        with db.transaction():
            db.insert_transfer(
                id="t" + "0" * 31, fingerprint="bench-download", message_id="<bench@city.example.lg.jp>",
                sender="somu@city.example.lg.jp", department="somu", subject="【送付】お見積書の件",
                created_at=now, expires_at=now + timedelta(days=1), password_channel="none",
                locale="ja", state="active",
            )
            db.insert_file(
                id="f" + "0" * 31, transfer_id="t" + "0" * 31, display_name=FILE_NAME,
                content_type="application/pdf", size=info.size, sha256=info.sha256,
                blob_id=info.blob_id, wrapped_key=info.wrapped_key, position=0,
            )
            db.insert_link(
                id="l" + "0" * 31, transfer_id="t" + "0" * 31, recipient="tanaka@partner.example.com",
                token_hash=hash_token(token), created_at=now, state="active", max_downloads=0,
                activated_at=now,
            )
    finally:
        db.close()
    return token


def portal_counts(data_dir: Path) -> tuple[int, Counter]:
    """(the link's download count, audit events by kind) after the gateway has stopped."""
    db = Database(data_dir / "gateway.sqlite3")
    try:
        (link,) = db.links_of("t" + "0" * 31)
        return link.download_count, Counter(event.kind for event in db.events())
    finally:
        db.close()


# -- the client --------------------------------------------------------------------------------


class DownloadError(Exception):
    """A download did not give exactly the original bytes."""


@dataclass
class ClientResult:
    durations: list[float] = field(default_factory=list)  # seconds, first request → last byte
    first_bytes: list[float] = field(default_factory=list)  # seconds, first request → body headers
    failures: list[str] = field(default_factory=list)
    bytes: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0


async def read_and_check(response: aiohttp.ClientResponse, payload: Payload) -> int:
    if response.status != 200:
        raise DownloadError(f"HTTP {response.status}")
    digest, size = hashlib.sha256(), 0
    async for chunk in response.content.iter_chunked(READ_SIZE):
        digest.update(chunk)
        size += len(chunk)
    if size != payload.size or digest.hexdigest() != payload.sha256:
        raise DownloadError(f"wrong body: {size} bytes, SHA-256 {digest.hexdigest()[:16]}…")
    return size


Fetch = Callable[[aiohttp.ClientSession, Payload, float], Awaitable[tuple[float, int]]]


def reference_fetch(base: str) -> Fetch:
    async def fetch(session: aiohttp.ClientSession, payload: Payload, started: float) -> tuple[float, int]:
        async with session.get(f"{base}/file") as response:
            first = time.perf_counter() - started
            return first, await read_and_check(response, payload)
    return fetch


def portal_fetch(base: str, token: str) -> Fetch:
    async def fetch(session: aiohttp.ClientSession, payload: Payload, started: float) -> tuple[float, int]:
        async with session.get(f"{base}/d/{token}") as landing:
            page = await landing.text()
            if landing.status != 200:
                raise DownloadError(f"landing page: HTTP {landing.status}")
        csrf, action = CSRF_FIELD.search(page), FILE_ACTION.search(page)
        if csrf is None or action is None:
            raise DownloadError("landing page without a CSRF token or a file form")
        # Origin as a browser sends it with a form POST.
        async with session.post(base + html.unescape(action.group(1)), headers={"Origin": base},
                                data={"csrf": html.unescape(csrf.group(1))}) as response:
            first = time.perf_counter() - started
            return first, await read_and_check(response, payload)
    return fetch


async def client_task(session: aiohttp.ClientSession, fetch: Fetch, payload: Payload, rounds: int,
                      result: ClientResult) -> None:
    for _ in range(rounds):
        started = time.perf_counter()
        try:
            first, size = await fetch(session, payload, started)
        except (DownloadError, aiohttp.ClientError, asyncio.TimeoutError) as error:
            result.failures.append(f"{type(error).__name__}: {error}")
            continue
        result.durations.append(time.perf_counter() - started)
        result.first_bytes.append(first)
        result.bytes += size


async def run_clients(fetch: Fetch, payload: Payload, args: argparse.Namespace) -> ClientResult:
    result = ClientResult()
    connector = aiohttp.TCPConnector(limit=args.clients)
    timeout = aiohttp.ClientTimeout(total=args.op_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client_task(session, fetch, payload, args.rounds, result)
                               for _ in range(args.clients)))
        result.wall_seconds = time.perf_counter() - wall
        result.cpu_seconds = time.process_time() - cpu
    return result


def drive_clients(fetch: Fetch, payload: Payload, args: argparse.Namespace, deadline: float) -> ClientResult:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BenchError("global timeout reached")
    try:
        return asyncio.run(asyncio.wait_for(run_clients(fetch, payload, args), remaining))
    except TimeoutError:
        raise BenchError(f"global timeout ({args.timeout:g} s) reached while downloading") from None


# -- the two servers ---------------------------------------------------------------------------


@dataclass
class Phase:
    server: str  # "reference" | "portal"
    client: ClientResult
    server_cpu_seconds: float
    rss_start_bytes: int  # VmHWM once listening, before any download
    rss_peak_bytes: int  # VmHWM after the downloads
    rss_end_bytes: int  # VmRSS after the downloads
    problems: list[str] = field(default_factory=list)


def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def measure(name: str, child: Child, fetch: Fetch, payload: Payload, args, deadline: float) -> Phase:
    start = process_usage(child.process.pid)
    client = drive_clients(fetch, payload, args, deadline)
    usage = usage_since(child.process.pid, start)
    return Phase(name, client, usage.cpu_seconds, start.peak_rss_bytes, usage.peak_rss_bytes,
                 resident_bytes(child.process.pid))


def run_reference(workdir: Path, payload: Payload, args, deadline: float) -> Phase:
    server = spawn("reference", [sys.executable, "-c", STATIC_SERVER, str(payload.path)], workdir)
    try:
        port = int(wait_for_line(server, server.stdout, r"^READY (\d+)$", deadline).group(1))
        return measure("reference", server, reference_fetch(f"http://127.0.0.1:{port}"), payload,
                       args, deadline)
    finally:
        server.stop()


def gateway_command(workdir: Path, data_dir: Path, chunk_size: int, profile: Path | None) -> list[str]:
    overrides = [
        "smtp.listen=127.0.0.1:0", "portal.listen=127.0.0.1:0", "admin.listen=127.0.0.1:0",
        f"next_hop.url=outbox:{workdir / 'outbox'}",
        f"storage.data_dir={data_dir}",
        f"storage.database={data_dir}/gateway.sqlite3",
        f"storage.master_key_file={data_dir}/master.key",
        f"storage.chunk_size={chunk_size}",
    ]
    args = ["serve", "--config", str(ROOT / "config" / "gateway.toml")]
    for override in overrides:
        args += ["-o", override]
    if profile is None:
        return [sys.executable, "-m", "gateway", *args]
    return [sys.executable, "-c", PROFILED_GATEWAY, str(profile), *args]


def trouble_lines(log: Path) -> list[str]:
    return [line.strip() for line in log.read_text(errors="replace").splitlines()
            if re.search(r" (ERROR|CRITICAL|WARNING) |Traceback", line) and "no DKIM key" not in line]


def run_portal(workdir: Path, payload: Payload, args, deadline: float) -> Phase:
    data_dir = workdir / "gateway-data"
    chunk_size = args.chunk_kib * 1024
    token = prepare_store(data_dir, payload, chunk_size)
    command = gateway_command(workdir, data_dir, chunk_size, args.profile)
    gateway = spawn("gateway", command, workdir)
    try:
        port = int(wait_for_line(gateway, gateway.stderr, r"\bportal=\S*:(\d+)(?:\s|$)", deadline).group(1))
        phase = measure("portal", gateway, portal_fetch(f"http://127.0.0.1:{port}", token), payload,
                        args, deadline)
        status = gateway.stop()
    finally:
        gateway.stop()
    served = len(phase.client.durations)
    count, events = portal_counts(data_dir)
    if status != 0:
        phase.problems.append(f"gateway exited with status {status}")
    if count != served or events["download"] != served:
        phase.problems.append(f"portal counted {count} downloads and audited {events['download']}; "
                              f"{served} were served")
    phase.problems += [f"gateway log: {line[:300]}" for line in trouble_lines(gateway.stderr)[:5]]
    growth = phase.rss_peak_bytes - phase.rss_start_bytes
    if growth > args.max_rss_growth_mib * MiB:
        phase.problems.append(f"portal peak RSS grew by {growth / MiB:.0f} MiB "
                              f"(limit --max-rss-growth-mib {args.max_rss_growth_mib})")
    return phase


def problems_of(phase: Phase, expected: int) -> list[str]:
    found = [f"{phase.server}: {n} x {failure}" for failure, n in Counter(phase.client.failures).most_common(5)]
    if len(phase.client.durations) != expected:
        found.append(f"{phase.server}: {len(phase.client.durations)} of {expected} downloads complete and exact")
    return found + [f"{phase.server}: {problem}" for problem in phase.problems]


# -- the report --------------------------------------------------------------------------------


def rate(phase: Phase) -> float:
    """MB/s, 10^6 bytes, over the whole phase (all clients together)."""
    return phase.client.bytes / 1e6 / phase.client.wall_seconds if phase.client.wall_seconds else 0.0


def results_table(phases: list[Phase]) -> list[str]:
    rows = [
        "| server | downloads ok | total MB/s | per download p50 s | p99 s | to body headers p50 ms | p99 ms "
        "| server RSS MiB: listening → peak (VmHWM) | server CPU s · client CPU s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for phase in phases:
        c = phase.client
        rows.append(
            f"| {phase.server} | {len(c.durations)} | {rate(phase):.0f} "
            f"| {percentile(c.durations, 50):.2f} | {percentile(c.durations, 99):.2f} "
            f"| {percentile(c.first_bytes, 50) * 1000:.0f} | {percentile(c.first_bytes, 99) * 1000:.0f} "
            f"| {phase.rss_start_bytes / MiB:.0f} → {phase.rss_peak_bytes / MiB:.0f} "
            f"| {phase.server_cpu_seconds:.1f} · {c.cpu_seconds:.1f} |"
        )
    return rows


def summary_lines(phases: list[Phase], args) -> list[str]:
    by_name = {phase.server: phase for phase in phases}
    reference, portal = by_name["reference"], by_name["portal"]
    lines = []
    if rate(reference):
        lines.append(f"- **portal / reference throughput: {rate(portal) / rate(reference):.2f}** "
                     f"({rate(portal):.0f} vs {rate(reference):.0f} MB/s)")
    in_flight = args.clients * args.size_mb
    lines.append(
        f"- portal memory: {portal.rss_start_bytes / MiB:.0f} MiB listening, peak "
        f"{portal.rss_peak_bytes / MiB:.0f} MiB with {args.clients} downloads in flight "
        f"({in_flight} MB of file being served at once), {portal.rss_end_bytes / MiB:.0f} MiB after"
    )
    lines.append("- CPU per GB served: " + ", ".join(
        f"{phase.server} {phase.server_cpu_seconds / (phase.client.bytes / 1e9 or 1):.1f} s "
        f"(client {phase.client.cpu_seconds / (phase.client.bytes / 1e9 or 1):.1f} s)" for phase in phases))
    return lines


def report(phases: list[Phase], args, argv: list[str], workdir: Path, problems: list[str]) -> str:
    downloads = args.clients * args.rounds
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: {machine_line(workdir, PACKAGES)}.",
        "",
        f"Command: `.venv/bin/python bench/download_throughput.py {shlex.join(argv)}`".rstrip() + "  ",
        f"One file of {args.size_mb} MB (random bytes), {args.clients} concurrent clients × "
        f"{args.rounds} downloads = {downloads} downloads per server, every body SHA-256-checked. "
        f"The portal's copy is stored in AES-256-GCM chunks of {args.chunk_kib} KiB. "
        "MB = 10^6 bytes; a portal download's time includes its landing page GET.",
        "",
        *results_table(phases),
        "",
        *summary_lines(phases, args),
        "",
        "Result: " + ("every download complete and exact, counted and audited once." if not problems
                      else "PROBLEMS — " + "; ".join(problems[:10])),
    ]
    if args.profile is not None:
        lines.insert(0, "(the portal ran under the per-thread profiler: its figures are slowed down)\n")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--size-mb", type=int, default=20, help="file size in MB, 10^6 bytes (20)")
    parser.add_argument("--rounds", type=int, default=2, help="downloads per client, one after another (2)")
    parser.add_argument("--chunk-kib", type=int, default=64,
                        help="storage.chunk_size of the stored file, KiB (64, the default setting)")
    parser.add_argument("--timeout", type=float, default=900, help="global time limit, seconds (900)")
    parser.add_argument("--op-timeout", type=float, default=300, help="per download, seconds (300)")
    parser.add_argument("--max-rss-growth-mib", type=int, default=256,
                        help="fail if the portal's peak RSS grows more than this while serving (256)")
    parser.add_argument("--write-docs", type=Path, metavar="MD",
                        help="replace the generated block of this file (docs/benchmarks.md)")
    parser.add_argument("--profile", type=Path, metavar="PSTATS",
                        help="run the gateway under a per-thread CPU profiler; write and summarise PSTATS")
    args = parser.parse_args(argv)
    if min(args.clients, args.size_mb, args.rounds, args.chunk_kib) < 1:
        parser.error("--clients, --size-mb, --rounds and --chunk-kib must be at least 1")
    if args.profile is not None and args.write_docs is not None:
        parser.error("--profile slows the portal down: do not combine it with --write-docs")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="download-bench-") as temp:
        workdir = Path(temp)
        try:
            payload = write_payload(workdir / "payload.bin", args.size_mb * 1_000_000)
            phases = []
            for run in (run_reference, run_portal):
                phases.append(run(workdir, payload, args, deadline))
                print(f"  {phases[-1].server:9} {rate(phases[-1]):6.0f} MB/s "
                      f"({len(phases[-1].client.durations)}/{args.clients * args.rounds} ok)", flush=True)
        except BenchError as error:
            print(f"download_throughput: {error}", file=sys.stderr)
            return 1
        problems = [problem for phase in phases for problem in problems_of(phase, args.clients * args.rounds)]
        block = report(phases, args, argv, workdir, problems)
    print()
    print(block)
    if args.profile is not None:
        print(f"\n== portal CPU profile: {args.profile}")
        print_profile(args.profile)
    if args.write_docs is not None:
        write_docs(args.write_docs, block, (DOCS_BEGIN, DOCS_END))
        print(f"\nwrote the generated block of {args.write_docs}")
    if problems:
        print(f"\ndownload_throughput: FAILED, {len(problems)} problem(s) listed above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
