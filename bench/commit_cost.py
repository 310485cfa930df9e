"""What durability costs per message: the old way (SQLite `synchronous=FULL`, an fsync of the WAL
in every commit) against group commit (`synchronous=NORMAL`, the relay's commits synced by one
shared fsync before the answer, gateway/store/durability.py), in one run.

For each way it runs `python -m gateway serve` (fresh data directory, bench/sink.py as the next
hop) and sends 2 KB plain mail, then a small PPAP mail (gateway/sample.py), at 1 and 20
sessions, rounds alternating the two ways. It prints, per mail, sessions and way, the median
over the rounds of messages/s and of fsyncs per message (of the -wal file, and all of them:
blobs and directories too; every writer of the gateway counts, the notice worker's too), and the
group/full ratio of the rate (compare that one between runs: the machine is shared and noisy).

The fsyncs are counted by an LD_PRELOAD shim (built with cc) around fsync and fdatasync, which
sees SQLite's own as well as ours; --fsync-delay-ms makes each of them that much slower, as on a
disk slower than this machine's virtual one (~0.15 ms a flush; a SATA SSD without power-loss
protection takes ~1-3 ms, a spinning disk ~8 ms).

    .venv/bin/python bench/commit_cost.py [--messages 300] [--ppap-messages 60] [--rounds 3]
        [--concurrency 1,20] [--fsync-delay-ms 2]

The old way is the same code with Database(group_commit=False), set in the gateway process by
a wrapper (GATEWAY below): what differs between the two is only the durability path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from gateway.sample import build_sample_message

ROOT = Path(__file__).resolve().parents[1]
SENDER = "somu@city.example.lg.jp"
RECIPIENT = "tanaka@partner.example.com"
MODES = ("full", "group")

# The gateway with the durability of the chosen mode; `serve` forks its workers from this process,
# so they inherit the choice.
GATEWAY = """
import functools, sys
import gateway.store.db as db
if sys.argv[1] == "full":
    db.Database.__init__ = functools.partialmethod(db.Database.__init__, group_commit=False)
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Each fsync or fdatasync appends one byte to BENCH_FSYNC_LOG ('W' for a -wal file, 'o' for
# anything else) and then sleeps BENCH_FSYNC_DELAY_US.
FSYNC_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int noted(int fd, int result) {
    const char *log = getenv("BENCH_FSYNC_LOG"), *us = getenv("BENCH_FSYNC_DELAY_US");
    if (log) {
        char link[64], target[4096], mark = 'o';
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 4) { target[n] = 0; if (strcmp(target + n - 4, "-wal") == 0) mark = 'W'; }
        int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (out >= 0) { if (write(out, &mark, 1) < 0) {} close(out); }
    }
    if (us) usleep((useconds_t)atoi(us));
    return result;
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return noted(fd, real(fd));
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return noted(fd, real(fd));
}
"""


def build_shim(workdir: Path) -> Path:
    source, library = workdir / "fsync_shim.c", workdir / "fsync_shim.so"
    source.write_text(FSYNC_SHIM_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
                   check=True)
    return library


def plain_message(run: str, index: int) -> bytes:
    body = "".join(f"line {n:03d} of a plain two-kilobyte message, nothing attached.\r\n"
                   for n in range(30))
    return (f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: plain {index}\r\n"
            f"Message-ID: <{run}-{index}@city.example.lg.jp>\r\n\r\n{body}").encode()


def ppap_message(run: str, index: int) -> bytes:
    sample = build_sample_message(SENDER, [RECIPIENT])
    return re.sub(rb"Message-ID: <[^>]*>", f"Message-ID: <{run}-p{index}@city.example.lg.jp>"
                  .encode(), sample, count=1)


# -- processes -------------------------------------------------------------------------------


@dataclass
class Running:
    process: subprocess.Popen
    log: Path

    def wait_for(self, pattern: str, seconds: float = 60) -> re.Match:
        regex, deadline = re.compile(pattern), time.monotonic() + seconds
        while time.monotonic() < deadline:
            if match := regex.search(self.log.read_text(errors="replace")):
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"no {pattern!r} from {self.process.args[:3]}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start(command: list[str], log: Path, environment: dict[str, str] | None = None) -> Running:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(environment or {})})
    return Running(process, log)


class Gateway:
    """A sink and a gateway of one mode on a fresh data directory, its fsyncs counted."""

    def __init__(self, mode: str, workdir: Path, shim: Path, delay_ms: float):
        self.workdir = workdir / f"{mode}-{time.monotonic_ns()}"
        self.workdir.mkdir()
        self.fsync_log = self.workdir / "fsyncs"
        self.fsync_log.touch()
        self.sink = start([sys.executable, str(ROOT / "bench" / "sink.py")], self.workdir / "sink.log")
        sink_port = self.sink.wait_for(r"READY (\d+)").group(1)
        data = self.workdir / "data"
        command = [sys.executable, "-c", GATEWAY, mode, "serve",
                   "--config", str(ROOT / "config" / "gateway.toml")]
        for setting in ("smtp.listen=127.0.0.1:0", "portal.listen=127.0.0.1:0",
                        "admin.listen=127.0.0.1:0", f"next_hop.url=smtp://127.0.0.1:{sink_port}",
                        "next_hop.starttls=off", f"storage.data_dir={data}",
                        f"storage.database={data}/gw.sqlite3",
                        f"storage.master_key_file={data}/master.key"):
            command += ["-o", setting]
        environment = {"LD_PRELOAD": str(shim), "BENCH_FSYNC_LOG": str(self.fsync_log),
                       "BENCH_FSYNC_DELAY_US": str(int(delay_ms * 1000))}
        self.gateway = start(command, self.workdir / "gateway.log", environment)
        self.port = int(self.gateway.wait_for(r"\bsmtp=\S*:(\d+)(?:\s|$)").group(1))

    def fsyncs(self) -> tuple[int, int]:
        """(of the WAL, all) so far."""
        marks = self.fsync_log.read_bytes()
        return marks.count(b"W"), len(marks)

    def close(self) -> None:
        self.gateway.stop()
        self.sink.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- the client ------------------------------------------------------------------------------


async def send_all(port: int, messages: list[bytes], sessions: int) -> float:
    """Send every message over `sessions` connections; seconds taken. Anything but 250 aborts."""
    queue = iter(messages)

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False,
                                 local_hostname="bench.localhost")
        await client.connect()
        for data in queue:
            refused, _ = await client.sendmail(SENDER, [RECIPIENT], data)  # raises unless 250
            if refused:
                raise SystemExit(f"refused: {refused}")
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return time.perf_counter() - started


# -- the measurements ------------------------------------------------------------------------


@dataclass
class Measure:
    rate: float  # messages/s
    wal: float  # fsyncs of the WAL per message
    every: float  # all fsyncs per message


def measure(gateway: Gateway, make: Callable[[str, int], bytes], run: str, messages: int,
            sessions: int) -> Measure:
    asyncio.run(send_all(gateway.port, [make(f"warm-{run}", i) for i in range(10)], sessions))
    time.sleep(1.5)  # what the warm-up queued (notices) goes first
    batch = [make(run, i) for i in range(messages)]
    wal_before, every_before = gateway.fsyncs()
    seconds = asyncio.run(send_all(gateway.port, batch, sessions))
    time.sleep(1.5)  # the notices these messages queued are theirs too
    wal, every = gateway.fsyncs()
    return Measure(messages / seconds, (wal - wal_before) / messages,
                   (every - every_before) / messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="plain messages per run")
    parser.add_argument("--ppap-messages", type=int, default=60, help="PPAP messages per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,20")
    parser.add_argument("--fsync-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]
    kinds = {"plain": (plain_message, args.messages), "ppap": (ppap_message, args.ppap_messages)}
    workdir = Path(tempfile.mkdtemp(prefix="commit-cost-"))
    results: dict[tuple[str, int, str], list[Measure]] = {}
    try:
        shim = build_shim(workdir)
        for round_ in range(args.rounds):
            for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
                for kind, (make, messages) in kinds.items():
                    for sessions in levels:
                        gateway = Gateway(mode, workdir, shim, args.fsync_delay_ms)
                        try:
                            measured = measure(gateway, make, f"{kind}-{mode}-{sessions}-{round_}",
                                               messages, sessions)
                        finally:
                            gateway.close()
                        results.setdefault((kind, sessions, mode), []).append(measured)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    delay = f", each +{args.fsync_delay_ms:g} ms" if args.fsync_delay_ms else ""
    print(f"fsync: the disk of {workdir.parent}{delay}; medians of {args.rounds} rounds\n")
    print("| mail | sessions | msgs/s full | msgs/s group | group/full | WAL fsyncs/msg full "
          "| group | all fsyncs/msg full | group |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for sessions in levels:
            full, group = results[(kind, sessions, "full")], results[(kind, sessions, "group")]

            def median(of: list[Measure], field: str) -> float:
                return statistics.median(getattr(m, field) for m in of)

            print(f"| {kind} | {sessions} | {median(full, 'rate'):.0f} | {median(group, 'rate'):.0f} "
                  f"| {median(group, 'rate') / median(full, 'rate'):.2f} "
                  f"| {median(full, 'wal'):.2f} | {median(group, 'wal'):.2f} "
                  f"| {median(full, 'every'):.2f} | {median(group, 'every'):.2f} |")
    print("\nrates per round:", json.dumps(
        {f"{k}@{s}/{m}": [round(x.rate) for x in v] for (k, s, m), v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
