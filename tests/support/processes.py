"""Run real processes in tests: where the repository is, a free loopback port to give the
`ppap-gateway` command and waiting until it listens, and a directory short enough for the unix
sockets of a server (clamd, PostgreSQL)."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIX_PATH_MAX = 107  # bytes of a unix socket's path (sun_path holds 108 with the NUL)


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound once to find it, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start listening")


def short_socket_dir(prefix: str, socket_name: str, near: Path | None = None) -> Path:
    """A directory in which `socket_name` makes a unix socket path that fits: `near` when it is
    short enough, else a new one, /tmp/<prefix>…, that the caller removes (pytest's temporary
    directories are often too deep). RuntimeError if even that is too long."""
    if near is not None and _fits(near, socket_name):
        return near
    made = Path(tempfile.mkdtemp(prefix=prefix))
    if not _fits(made, socket_name):
        made.rmdir()
        raise RuntimeError(f"temporary directory path too long for a unix socket: {made}")
    return made


def _fits(directory: Path, socket_name: str) -> bool:
    return len(bytes(directory / socket_name)) <= UNIX_PATH_MAX
