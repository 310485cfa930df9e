"""Run a private, real clamd for tests: its own config, socket and an EICAR-only signature database.

No network and no freshclam: the database is one body signature for the EICAR test string
(`eicar.ndb`), which clamd loads in well under a second. clamd reports names from databases
that ClamAV did not sign with `.UNOFFICIAL` appended, hence EICAR_REPORTED.

    with ClamdProcess(tmp_path) as clamd:
        scanner = ClamdScanner(clamd.address, timeout=5)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.processes import short_socket_dir

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Eicar-Test-Signature"
EICAR_REPORTED = f"{EICAR_SIGNATURE}.UNOFFICIAL"

_INSTALL_HINT = (
    "clamd is not installed: `make test` installs it (Makefile target system-deps, Debian "
    "packages clamav-daemon and clamav); by hand: apt-get install clamav-daemon clamav"
)


class ClamdNotInstalled(RuntimeError):
    pass


class ClamdProcess:
    """A clamd in the foreground on a unix socket under `workdir`; start() waits for PONG."""

    def __init__(
        self,
        workdir: Path,
        *,
        stream_max_length: int = 8 * 1024 * 1024,
        start_timeout: float = 60.0,
    ):
        self.workdir = workdir
        self.stream_max_length = stream_max_length
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None
        # workdir itself, unless a socket path there would be too long (deep pytest temp dirs)
        self._socket_dir = short_socket_dir("clamd-", "clamd.sock", near=workdir)
        self.socket_path = self._socket_dir / "clamd.sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._output_path = workdir / "clamd.out"

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        binary = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise ClamdNotInstalled(_INSTALL_HINT)
        config = self._write_config()
        began = time.monotonic()
        with open(self._output_path, "wb") as output:
            self._process = subprocess.Popen(
                [binary, f"--config-file={config}"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_for_pong(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self, grace: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._socket_dir != self.workdir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def log(self) -> str:
        """What clamd printed (start-up problems land here before its log file opens)."""
        try:
            return self._output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        database = self.workdir / "db"
        temporary = self.workdir / "tmp"
        database.mkdir(exist_ok=True)
        temporary.mkdir(exist_ok=True)
        # Body signature, any file type, anywhere in the data: EICAR with or without a newline.
        (database / "eicar.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
        config = self.workdir / "clamd.conf"
        config.write_text(
            "\n".join([
                f"LocalSocket {self.socket_path}",
                "LocalSocketMode 600",
                "FixStaleSocket yes",
                "Foreground yes",
                f"DatabaseDirectory {database}",
                f"TemporaryDirectory {temporary}",
                f"LogFile {self.workdir / 'clamd.log'}",
                "LogSyslog no",
                "LogTime yes",
                "SelfCheck 0",
                "Bytecode no",
                "MaxThreads 4",
                "MaxQueue 16",
                "CommandReadTimeout 5",
                "ReadTimeout 10",
                f"StreamMaxLength {self.stream_max_length}",
                "",
            ])
        )
        return config

    def _wait_for_pong(self, deadline: float) -> None:
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"clamd exited with {self._process.returncode}:\n{self.log()}")
            if _answers_ping(self.socket_path):
                return
            time.sleep(0.05)
        raise RuntimeError(f"clamd did not answer PING within {self.start_timeout}s:\n{self.log()}")


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(str(path))
            probe.sendall(b"zPING\0")
            return probe.recv(16) == b"PONG\0"
    except OSError:
        return False
