"""The paths of the load bench and one measurement over one of them: smtp-source -F → path →
smtp-sink, timed until the sink has counted every message.

  direct           smtp-source → smtp-sink
  postfix          → plain Postfix (bench/peers/mimedefang/postfix_pair.sh, :10225) → sink
  postfix+md       → the same Postfix with MIMEDefang as milter (:10227, md_ctl.sh) → sink
  gateway          → `python -m gateway serve` (fresh data dir) → sink
  postfix+gateway  → Postfix as in docs/postfix.md (content_filter → gateway → re-injection) → sink

The peer's scripts fix the ports (10225-10227, the sink on 10226), so one smtp-sink on 10226 serves
every path, counting on; a measurement waits for its own count.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proc_tree import PssSampler, TreeUsage, tree_usage
from relay_throughput import (
    ROOT,
    BenchError,
    data_dir_sizes,
    gateway_command,
    read_gateway_log,
    spawn,
)

sys.path.insert(0, str(ROOT))  # for tests.support.postfix: the private-instance code the tests use
from tests.support.postfix import PostfixInstance, free_port, program

PEER_SCRIPTS = ROOT / "bench" / "peers" / "mimedefang"
SINK_PORT, PLAIN_PORT, MD_PORT = 10226, 10225, 10227  # as postfix_pair.sh writes them
PATHS = ("direct", "postfix", "postfix+md", "gateway", "postfix+gateway")
MiB = 1024 * 1024


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], deadline: float, what: str,
               alive: Callable[[], bool] = lambda: True) -> None:
    while not condition():
        if not alive() or time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen in time")
        time.sleep(0.05)


# -- the far end and the peer -------------------------------------------------------------------


class Sink:
    """smtp-sink -c on the pair's sink port; its counter line is rewritten (CR) after each event."""

    def __init__(self, workdir: Path, deadline: float) -> None:
        if accepts(SINK_PORT):
            raise BenchError(f"something already listens on 127.0.0.1:{SINK_PORT} (the peer's sink port)")
        user = ["-u", "postfix"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
        self.child = spawn("smtp-sink", [program("smtp-sink") or "smtp-sink", *user, "-c",
                                         f"127.0.0.1:{SINK_PORT}", "1024"], workdir)
        wait_until(lambda: accepts(SINK_PORT), deadline, "smtp-sink listening",
                   lambda: self.child.process.poll() is None)

    def count(self) -> int:
        with open(self.child.stdout, "rb") as out:  # the tail only: the file grows all run long
            out.seek(max(0, out.seek(0, os.SEEK_END) - 256))
            counts = re.findall(rb"mesg=(\d+)", out.read())
        return int(counts[-1]) if counts else 0

    def wait_for(self, target: int, stall: float, deadline: float) -> bool:
        """Until the count reaches target (True), or has not moved for `stall` seconds, or the
        deadline passed (False): a stuck path ends its measurement, not the whole run."""
        last, moved = self.count(), time.monotonic()
        while last < target:
            if time.monotonic() > deadline or time.monotonic() - moved > stall:
                return False
            time.sleep(0.02)
            if (count := self.count()) != last:
                last, moved = count, time.monotonic()
        return True

    def stop(self) -> None:
        self.child.stop()


class MimeDefangPeer:
    """The peer as issue 14 ran it: md_ctl.sh (multiplexor + milter) and postfix_pair.sh (plain
    and milter Postfix), with their state under `root` (their TMPDIR)."""

    def __init__(self, root: Path, mx_opts: str, md_opts: str) -> None:
        self.root = root
        self.mx_opts, self.md_opts = mx_opts, md_opts  # md_ctl.sh's MX_OPTS, MD_OPTS: extra options
        root.mkdir(mode=0o755, exist_ok=True)

    def _run(self, script: str, action: str) -> str:
        env = {**os.environ, "TMPDIR": str(self.root), "MX_OPTS": self.mx_opts, "MD_OPTS": self.md_opts}
        done = subprocess.run(["sh", str(PEER_SCRIPTS / script), action], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        if done.returncode != 0:
            raise BenchError(f"{script} {action} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        return done.stdout

    def start(self, deadline: float) -> None:
        for port in (PLAIN_PORT, MD_PORT):
            if accepts(port):
                raise BenchError(f"something already listens on 127.0.0.1:{port} (the peer's Postfix port)")
        self._run("md_ctl.sh", "start")
        self._run("postfix_pair.sh", "start")
        wait_until(lambda: accepts(PLAIN_PORT) and accepts(MD_PORT), deadline, "peer Postfix listening")
        # The multiplexor brings its minimum of workers up one every few seconds; until then a
        # burst finds none free and is tempfailed: wait for them (issue 14's run was warm too).
        wanted = int(re.findall(r"-m\s*(\d+)", "-m 2 " + self.mx_opts)[-1])  # md_ctl.sh: -m 2, then MX_OPTS
        wait_until(lambda: self.idle_workers() >= wanted, min(deadline, time.monotonic() + 120),
                   f"{wanted} MIMEDefang workers idle")

    def idle_workers(self) -> int:
        socket_path = self.root / "mdbench" / "md" / "mx.sock"  # md_ctl.sh's multiplexor socket
        done = subprocess.run([program("md-mx-ctrl") or "md-mx-ctrl", "-s", str(socket_path), "status"],
                              capture_output=True, text=True, timeout=30, check=False)
        return len(re.findall(r"^Worker \d+: idle", done.stdout, re.MULTILINE))

    def stop(self) -> None:
        for script in ("postfix_pair.sh", "md_ctl.sh"):
            try:
                self._run(script, "stop")
            except (BenchError, subprocess.TimeoutExpired) as error:
                print(f"postfix_load: {error}", flush=True)


# -- the gateway ----------------------------------------------------------------------------------


@dataclass
class GatewayFacts:
    usage: TreeUsage  # over its process tree, during the load only
    handling_ms: list[float]  # its own time per message (log `ms`: end of DATA → reply)
    problems: list[str]


class Gateway:
    """One `serve` on a fresh data directory, next hop `next_hop_port`, every listener on a free port."""

    def __init__(self, name: str, workdir: Path, next_hop_port: int, options: list[str],
                 workers: int | None, deadline: float) -> None:
        self.data_dir = workdir / f"data-{name}"
        self.port = free_port()
        extra = [*options, f"smtp.listen=127.0.0.1:{self.port}", f"portal.listen=127.0.0.1:{free_port()}",
                 f"admin.listen=127.0.0.1:{free_port()}"]
        if workers is not None:  # only when asked: the option exists from issue 14 point 1 on
            extra.append(f"gateway.workers={workers}")
        self.child = spawn(f"gateway-{name}", gateway_command(self.data_dir, next_hop_port, extra, None), workdir)
        alive = lambda: self.child.process.poll() is None
        try:
            wait_until(lambda: accepts(self.port), deadline, f"gateway {name} listening", alive)
        except BenchError:
            self.child.stop()
            raise BenchError(f"gateway {name} did not start: "
                             f"{self.child.stderr.read_text(errors='replace')[-1500:]}") from None
        self.database = self.data_dir / "gw.sqlite3"
        self.before = tree_usage(self.child.process.pid)
        self.memory = PssSampler(self.child.process.pid)

    def finish(self, messages: int, converted_wanted: int) -> GatewayFacts:
        """Usage since start of load, then stop it and check its log and store."""
        now = tree_usage(self.child.process.pid)
        usage = TreeUsage(now.cpu_seconds - self.before.cpu_seconds, now.peak_rss_bytes,
                          now.processes, self.memory.stop())
        status = self.child.stop()
        replies, converted, handling, trouble = read_gateway_log(self.child.stderr)
        blobs, _, _ = data_dir_sizes(self.data_dir)
        problems = [f"gateway: {line[:300]}" for line in trouble[:5]]
        if status != 0:
            problems.append(f"gateway exited with status {status}")
        if replies != {"250": messages}:
            problems.append(f"gateway replies {replies}, wanted {{'250': {messages}}}")
        if converted != converted_wanted or blobs != converted_wanted:
            problems.append(f"gateway converted {converted} and stored {blobs} files, wanted {converted_wanted}")
        return GatewayFacts(usage, handling, problems)

    def stop(self) -> None:
        self.memory.stop()
        self.child.stop()


# -- one measurement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    mail: str  # "2mb" | "2kb"
    sessions: int
    messages: int


@dataclass
class Measurement:
    path: str
    cell: Cell
    seconds: float = 0.0  # first connection → the sink counted the last message
    at_sink: int = 0
    gateway: GatewayFacts | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.cell.messages / self.seconds if self.seconds else 0.0


def smtp_source(port: int, cell: Cell, sender: str, mail_file: Path, out: Path, deadline: float) -> list[str]:
    """One smtp-source: `-s` sessions, `-m` messages, several per session (-d), each to its own
    numbered recipient (-N), the file's header and body as they are (-F)."""
    command = [program("smtp-source") or "smtp-source", "-s", str(cell.sessions), "-m", str(cell.messages),
               "-d", "-N", "-M", "bench.test", "-f", sender, "-t", "partner@partner.example.com",
               "-F", str(mail_file), f"127.0.0.1:{port}"]
    with open(out, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        process.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.returncode != 0:
        return [f"smtp-source exited {process.returncode}: {out.read_text(errors='replace')[-500:].strip()}"]
    return []


@dataclass
class Bench:
    """What every measurement shares: the sink, the running peer, the mails, the options."""

    workdir: Path
    sink: Sink
    mails: dict[str, Path]  # cell.mail → LF file
    gateway_options: list[str]
    workers: int | None
    stall: float
    deadline: float
    runs: int = 0

    def measure(self, path: str, cell: Cell, sender: str, pending: int | None = None) -> Measurement:
        """One path, one cell. `pending`: fill the gateway's store with that many waiting transfers
        of `sender` first (bench/pending_work.py's seeding), restarting it on the filled store."""
        self.runs += 1
        name = f"{self.runs:03d}-{path}-{cell.mail}-c{cell.sessions}"
        result = Measurement(path, cell)
        gateway: Gateway | None = None
        relay: PostfixInstance | None = None
        try:
            port = {"direct": SINK_PORT, "postfix": PLAIN_PORT, "postfix+md": MD_PORT}.get(path)
            if path in ("gateway", "postfix+gateway"):
                reinject = free_port() if path == "postfix+gateway" else SINK_PORT
                gateway = self._gateway(name, reinject, pending)
                port = gateway.port
                if path == "postfix+gateway":
                    relay = PostfixInstance.in_front(gateway.port, SINK_PORT, reinject_port=reinject).start()
                    port = relay.listen_port
            start_count = self.sink.count()
            started = time.monotonic()
            result.problems += smtp_source(port, cell, sender, self.mails[cell.mail],
                                           self.workdir / f"{name}.smtp-source", self.deadline)
            self.sink.wait_for(start_count + cell.messages, self.stall, self.deadline)
            result.seconds = time.monotonic() - started
            time.sleep(0.5)  # a duplicate would arrive now
            result.at_sink = self.sink.count() - start_count
            if gateway is not None:
                result.gateway = gateway.finish(cell.messages, cell.messages if cell.mail == "2mb" else 0)
                result.problems += result.gateway.problems
        finally:
            if relay is not None:
                relay.stop()
            if gateway is not None:
                gateway.stop()
                shutil.rmtree(gateway.data_dir, ignore_errors=True)  # 100 x 1.5 MB of blobs per 2 MB run
        if result.at_sink != cell.messages:
            result.problems.append(f"{name}: the sink counted {result.at_sink} of {cell.messages}")
        return result

    def _gateway(self, name: str, next_hop: int, pending: int | None) -> Gateway:
        if pending is None:
            return Gateway(name, self.workdir, next_hop, self.gateway_options, self.workers, self.deadline)
        from pending_work import fill  # the pending-work bench's own seeding

        first = Gateway(name, self.workdir, next_hop, self.gateway_options, self.workers, self.deadline)
        first.stop()  # it has created the store and run the migrations
        fill(first.database, pending)
        return Gateway(name, self.workdir, next_hop, self.gateway_options, self.workers, self.deadline)
