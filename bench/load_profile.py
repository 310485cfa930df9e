"""Where the gateway's CPU goes under load: py-spy samples `serve` and its worker processes
(--subprocesses) while a load runs, and the stacks are summed into self and inclusive shares."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
# Start-up frames under every stack of a process (they would top the inclusive list), and leaf
# frames of threads waiting rather than working that py-spy's idle detection lets through.
_ENTRY_FILES = ("gateway/__main__.py", "gateway/cli.py", "gateway/supervisor.py", "gateway/worker.py")
_WAITING = ("EpollSelector.select (selectors.py)", "Condition.wait (threading.py)",
            "_worker (concurrent/futures/thread.py)", "Event.wait (threading.py)")


def py_spy() -> str | None:
    """py-spy beside this Python (`pip install py-spy` into .venv), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy record on a running process tree until stop(); raw (collapsed) stacks into `out`."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [py_spy() or "py-spy", "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                 "--rate", str(rate), "--format", "raw", "--output", str(out)],
                stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Profile:
    samples: int
    self_share: list[tuple[str, float]]  # function → share of samples where it was running itself
    inclusive_share: list[tuple[str, float]]  # the project's own functions, with what they called


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/", "main/"):
        path = path.split(marker, 1)[-1]
    return f"{match['func']} ({path})"


def summarise(raw: Path, top: int = 12) -> Profile:
    own, inclusive, total = Counter(), Counter(), 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [_name(frame) for frame in stack.split(";")[1:]]  # [0] is the process
        if not frames:
            continue
        if frames[-1] in _WAITING:
            continue
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            if "(gateway/" in name and not name.endswith(tuple(f"({f})" for f in _ENTRY_FILES)):
                inclusive[name] += samples
    if not total:
        return Profile(0, [], [])
    share = lambda counter: [(name, n / total) for name, n in counter.most_common(top)]
    return Profile(total, share(own), share(inclusive))


def markdown(title: str, profile: Profile) -> list[str]:
    if not profile.samples:
        return [f"{title}: no samples (py-spy missing or not allowed to attach)."]
    lines = [f"{title} ({profile.samples} samples at 200 Hz of threads at work, not waiting):", "",
             "| running itself | share | | the gateway's own functions, with what they call | share |",
             "|---|--:|---|---|--:|"]
    for index in range(max(len(profile.self_share), len(profile.inclusive_share))):
        cells = []
        for shares in (profile.self_share, profile.inclusive_share):
            name, share = shares[index] if index < len(shares) else ("", 0.0)
            cells.append(f"`{name}` | {share:.0%}" if name else " | ")
        lines.append(f"| {cells[0]} | | {cells[1]} |")
    return lines
