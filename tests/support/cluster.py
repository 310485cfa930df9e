"""Nodes of a cluster for tests: `ppap-gateway serve` processes of their own (own ports, own data
directory, own log) sharing one PostgreSQL database for metadata and files, and one master key
(given in the environment, as docs/cluster.md tells operators to); and the PPAP mail they are
loaded with, numbered so that its copies can be told apart."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

from gateway.cli import CRASH_AT_VARIABLE
from tests.support.corpus import corpus_mail
from tests.support.processes import ROOT, free_port

EXAMPLE = ROOT / "config" / "gateway.toml"
MASTER_KEY_ENV = "PPAP_GATEWAY_MASTER_KEY"
PPAP = corpus_mail("01_outlook_jis_aes256")


def shared_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def numbered(number: int) -> bytes:
    """The PPAP mail with a Message-ID of its own, so its copies can be told apart."""
    head, separator, body = PPAP.raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"message-id:")]
    return b"\r\n".join([*lines, f"Message-ID: <load-{number}@city.example.lg.jp>".encode()]) \
        + separator + body


def message_id(data: bytes) -> str:
    return str(BytesHeaderParser().parsebytes(data)["Message-ID"]).strip()


@dataclass
class _Ports:
    portal_port: int


class Node:
    """One `serve` on the shared database; `gateway.portal_port` as RunningGateway has it, so
    tests/support/portal_http.py's helpers work on a node too."""

    def __init__(self, workdir: Path, name: str, dsn: str, master_key: str, sink_port: int,
                 *overrides: str, crash_at: str = ""):
        """`crash_at`: a crash point (gateway/crashpoints.py) at which this node kills itself."""
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.config = self.dir / "gateway.toml"
        # The example without its departments: every sender has the default policy (no
        # download password), so a link downloads at once.
        example = EXAMPLE.read_text(encoding="utf-8")
        self.config.write_text(example.split("[[departments]]")[0], encoding="utf-8")
        self.log = self.dir / "serve.log"
        self.port, self.portal, self.admin = free_port(), free_port(), free_port()
        self.gateway = _Ports(self.portal)
        data = self.dir / "data"
        self.settings = (
            f"smtp.listen=127.0.0.1:{self.port}", f"portal.listen=127.0.0.1:{self.portal}",
            f"admin.listen=127.0.0.1:{self.admin}", "portal.public_url=http://files.test",
            f"next_hop.url=smtp://127.0.0.1:{sink_port}", "next_hop.starttls=off",
            f"storage.data_dir={data}", f"storage.database={dsn}", "storage.blobs=database",
            f"storage.master_key_env={MASTER_KEY_ENV}", *overrides,
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PPAP_GATEWAY_")}
        self.env[MASTER_KEY_ENV] = master_key
        if crash_at:
            self.env[CRASH_AT_VARIABLE] = crash_at
        self.process: subprocess.Popen | None = None

    def start(self) -> Node:
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        for setting in self.settings:
            command += ["-o", setting]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stderr=log)
        self.wait_for_log(r"INFO gateway ready: ", count=self.logged().count("gateway ready: ") + 1)
        return self

    def command(self, *arguments: str) -> subprocess.CompletedProcess:
        """A `ppap-gateway` command (revoke, transfers, …) run on this node's configuration."""
        command = [sys.executable, "-m", "gateway", arguments[0], "--config", str(self.config)]
        for setting in self.settings:
            command += ["-o", setting]
        return subprocess.run([*command, *arguments[1:]], cwd=ROOT, env=self.env, check=False,
                              capture_output=True, text=True, timeout=60)

    def logged(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.logged())) < count:
            assert self.process is not None and self.process.poll() is None, self.logged()
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.logged()}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL of the supervisor; its workers die with it (PR_SET_PDEATHSIG)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)
