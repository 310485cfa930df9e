"""CPU time and peak memory of a process and all its descendants (a `serve` and its worker
processes), read from /proc. Memory two ways: the sum of each process's VmHWM (an upper bound:
pages the workers share with the supervisor after the fork count once per process) and the
largest sum of their Pss seen while sampling (each shared page counted once, split between
those that share it: the memory the tree really holds, sampled, so a peak between two samples
can be missed)."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeUsage:
    cpu_seconds: float  # user + system of every live process, + what the root reaped (cutime, cstime)
    peak_rss_bytes: int  # sum of each process's VmHWM: an upper bound of their peak together
    processes: int
    peak_pss_bytes: int = 0  # the largest sum of Pss sampled (PssSampler), 0 if not sampled


def _stat_fields(pid: int) -> list[str]:
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def descendants(root: int) -> list[int]:
    """root and every process below it, from the parent pid of every process now in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def tree_usage(root: int) -> TreeUsage:
    cpu_ticks, peak, count = 0, 0, 0
    for pid in descendants(root):
        try:
            fields = _stat_fields(pid)
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        # utime, stime; for the root also cutime, cstime: workers it has already reaped
        cpu_ticks += sum(int(v) for v in fields[11:15 if pid == root else 13])
        if hwm := re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE):
            peak += int(hwm.group(1)) * 1024
        count += 1
    return TreeUsage(cpu_ticks / TICKS, peak, count)


def tree_pss(root: int) -> int:
    """The sum of Pss (proportional set size) of root and its descendants, in bytes."""
    total = 0
    for pid in descendants(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        if pss := re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE):
            total += int(pss.group(1)) * 1024
    return total


class PssSampler:
    """The largest tree_pss(root) seen, sampled every `interval` seconds on a thread of its own."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self._root, self._interval = root, interval
        self.idle_bytes = tree_pss(root)
        self.peak_bytes = self.idle_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, tree_pss(self._root))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes
