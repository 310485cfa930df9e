"""Run private, real Postfix instances for tests and benchmarks; the system's Postfix is never used.

Each instance lives in its own world-traversable temp dir (Postfix's daemons run as the `postfix`
user and must reach it): its own config_directory (main.cf and master.cf written here), queue and
data directory, listeners on free loopback ports only (never 25), no local delivery, and its log
in a file (`maillog_file`, via postlogd) that tests read. Two set-ups:

  in_front(...)  Postfix as in docs/postfix.md: content_filter to the gateway, a re-injection
                 smtpd for the gateway's next hop, delivery of re-injected mail to `deliver_port`.
  relay(...)     a plain relay: everything it accepts goes to `deliver_port` (relayhost).

Starting needs root (this project's CI runs as root) and `make system-deps`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "postfix.md"
SBIN = Path("/usr/sbin")
INSTALL_HINT = "`make system-deps` installs it (Debian packages postfix, swaks)"

# The ports docs/postfix.md uses (as 127.0.0.1:PORT or [127.0.0.1]:PORT); tests use free ones.
DOC_GATEWAY_PORT = 10025
DOC_REINJECT_PORT = 10026

# Private-instance plumbing that a real installation already has; {dir} and {name} are filled in.
_INSTANCE_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {name}.postfix.test
mydomain = postfix.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery here
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
syslog_name = ppap-test-{name}
"""

# master.cf services every instance needs (Debian's defaults, without chroot).
_INTERNAL_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """A Postfix command failed or the instance did not reach the expected state in time."""


def missing_programs() -> str | None:
    """Why Postfix tests cannot run here, or None when postfix, smtp-source, smtp-sink and swaks exist."""
    needed = ("postfix", "postqueue", "smtp-source", "smtp-sink", "swaks")
    missing = [name for name in needed if program(name) is None]
    return f"not installed: {', '.join(missing)}; {INSTALL_HINT}" if missing else None


def program(name: str) -> str | None:
    """Path of a Postfix tool or swaks: on PATH, else in /usr/sbin (Debian puts postfix's there)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = SBIN / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class DocumentedConfig:
    main_cf: list[str]
    master_cf: list[str]


def documented_config(doc: Path = DOC) -> DocumentedConfig:
    """The main.cf and master.cf lines of docs/postfix.md: the code block after each marker."""
    text = doc.read_text(encoding="utf-8")
    return DocumentedConfig(_block_after(text, "main.cf"), _block_after(text, "master.cf"))


def _block_after(text: str, name: str) -> list[str]:
    match = re.search(rf"<!-- postfix:{re.escape(name)} -->\s*```\n(.*?)```", text, re.DOTALL)
    if match is None:
        raise PostfixError(f"docs/postfix.md has no block marked postfix:{name}")
    return [line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _with_ports(lines: list[str], gateway_port: int, reinject_port: int) -> list[str]:
    ports = {str(DOC_GATEWAY_PORT): str(gateway_port), str(DOC_REINJECT_PORT): str(reinject_port)}
    loopback_port = re.compile(r"(127\.0\.0\.1\]?:)(\d+)\b")
    return [loopback_port.sub(lambda m: m.group(1) + ports.get(m.group(2), m.group(2)), line)
            for line in lines]


def _smtpd_service(port: int) -> str:
    return f"127.0.0.1:{port} inet  n       -       n       -       -       smtpd"


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    queue_name: str  # "incoming", "active", "deferred", "hold", ...
    sender: str
    recipients: list[str]
    delay_reasons: list[str]


class PostfixInstance:
    """One private Postfix: start() writes its config and starts it, stop() stops it and cleans up."""

    def __init__(self, name: str, listen_port: int, main_cf: list[str], services: list[str],
                 reinject_port: int | None = None):
        self.name = name
        self.listen_port = listen_port
        self.reinject_port = reinject_port  # in_front: where the gateway hands mail back
        self.dir = Path(tempfile.mkdtemp(prefix=f"ppap-postfix-{name}-"))
        self.config_dir = self.dir / "etc"
        self.log_path = self.dir / "maillog"
        self._main_cf = main_cf
        self._services = services

    @classmethod
    def in_front(cls, gateway_port: int, deliver_port: int, listen_port: int | None = None,
                 reinject_port: int | None = None) -> PostfixInstance:
        """Postfix → content_filter → gateway → re-injection smtpd → relayhost [127.0.0.1]:deliver_port."""
        listen_port = listen_port or free_port()
        reinject_port = reinject_port or free_port()
        documented = documented_config()
        main_cf = [*_with_ports(documented.main_cf, gateway_port, reinject_port),
                   f"relayhost = [127.0.0.1]:{deliver_port}"]
        services = [_smtpd_service(listen_port),
                    *_with_ports(documented.master_cf, gateway_port, reinject_port)]
        return cls("front", listen_port, main_cf, services, reinject_port)

    @classmethod
    def relay(cls, deliver_port: int, listen_port: int | None = None,
              main_cf: tuple[str, ...] = ()) -> PostfixInstance:
        """A plain relay on listen_port: everything it accepts goes to [127.0.0.1]:deliver_port;
        `main_cf` lines are added to its main.cf."""
        listen_port = listen_port or free_port()
        return cls("relay", listen_port, [f"relayhost = [127.0.0.1]:{deliver_port}", *main_cf],
                   [_smtpd_service(listen_port)])

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        try:
            self.write_config()
            self._run("postfix", "start")
            self._wait_for_listener(timeout)
        except BaseException:
            self.stop()  # a half-started master must not outlive the test
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """`postfix stop`, then `postfix abort` if the master is still there; removes the temp dir."""
        try:
            master = self._master_pid()
            if master is not None:
                self._run("postfix", "stop", check=False)
                if not _wait(lambda: not _alive(master), timeout):
                    self._run("postfix", "abort", check=False)
                    _wait(lambda: not _alive(master), 10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # -- queue and log -----------------------------------------------------------------------

    def flush(self) -> None:
        """`postqueue -f`: retry every deferred message now (and forget dead destinations)."""
        self._run("postqueue", "-f")

    def queue(self) -> list[QueuedMessage]:
        """What is in the queue now (`postqueue -j`)."""
        output = self._run("postqueue", "-j").stdout
        return [_queued(json.loads(line)) for line in output.splitlines() if line.strip()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
        """Wait until `count` log lines match the regex; return them."""
        regex = re.compile(pattern)

        def matching() -> list[str]:
            return [line for line in self.log().splitlines() if regex.search(line)]

        if not _wait(lambda: len(matching()) >= count, timeout):
            raise PostfixError(f"{self.name}: {count} log line(s) matching {pattern!r} did not appear "
                               f"in {timeout:g} s; log tail:\n{_tail(self.log())}")
        return matching()

    def wait_until_empty(self, timeout: float = 60.0) -> None:
        if not _wait(lambda: not self.queue(), timeout, interval=0.2):
            raise PostfixError(f"{self.name}: queue not empty after {timeout:g} s: {self.queue()}")

    # -- internals ---------------------------------------------------------------------------

    def write_config(self) -> None:
        """Write main.cf and master.cf and make the directories (start() does this first)."""
        self.dir.chmod(0o755)  # the postfix user must reach queue, data and config directories
        for sub in ("etc", "queue", "data"):
            (self.dir / sub).mkdir(exist_ok=True)
        shutil.chown(self.dir / "data", "postfix")
        base = _INSTANCE_MAIN_CF.format(dir=self.dir, name=self.name)
        (self.config_dir / "main.cf").write_text(base + "\n".join(self._main_cf) + "\n")
        (self.config_dir / "master.cf").write_text("\n".join(self._services) + "\n" + _INTERNAL_SERVICES)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        path = program(tool)
        if path is None:
            raise PostfixError(f"{tool} is not installed; {INSTALL_HINT}")
        done = subprocess.run([path, "-c", str(self.config_dir), *args], check=False,
                              capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise PostfixError(f"{tool} {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip()}\n{_tail(self.log())}")
        return done

    def _master_pid(self) -> int | None:
        """The running master's pid, from the pid file it writes into the queue directory."""
        try:
            pid = int((self.dir / "queue" / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _wait_for_listener(self, timeout: float) -> None:
        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.listen_port), timeout=1).close()
                return True
            except OSError:
                return False

        if not _wait(accepts, timeout):
            raise PostfixError(f"{self.name}: nothing listens on {self.listen_port}; log:\n{_tail(self.log())}")


def _queued(entry: dict) -> QueuedMessage:
    recipients = entry.get("recipients", [])
    return QueuedMessage(
        queue_id=entry["queue_id"],
        queue_name=entry["queue_name"],
        sender=entry.get("sender", ""),
        recipients=[r["address"] for r in recipients],
        delay_reasons=[r.get("delay_reason", "") for r in recipients],
    )


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])
