"""Read a running process's memory from /proc: resident size now (VmRSS), its peak (VmHWM),
and start the peak again from now, so a test measures what one phase adds."""

from __future__ import annotations

import socket
from pathlib import Path


def memory_kib(pid: int, field: str) -> int:
    """`VmRSS` or `VmHWM` of the process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Make the process's VmHWM its current VmRSS (proc(5): writing 5 to clear_refs); the
    resident size it starts from, in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kib(pid, "VmRSS")


def serving_worker(supervisor: int, smtp_port: int) -> int:
    """The one worker of a `serve` started with gateway.workers=1, once it greets on
    `smtp_port` (the supervisor listens before its worker is ready): whose memory to read."""
    with socket.create_connection(("127.0.0.1", smtp_port), timeout=60) as connection:
        assert connection.makefile("rb").readline().startswith(b"220")
    (worker,) = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return int(worker)
