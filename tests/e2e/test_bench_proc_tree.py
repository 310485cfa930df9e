"""bench/proc_tree.py, which the load bench uses for the gateway's CPU and peak RSS once `serve`
runs worker processes: it must count the children, not only the process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from proc_tree import tree_usage

# Each child holds 60 MB and spins for a second of CPU.
CHILD = ("import time; held = bytearray(60_000_000); start = time.process_time()\n"
         "while time.process_time() - start < 1.0: pass\ntime.sleep(30)")


def test_cpu_and_peak_rss_sum_over_the_children():
    children = " & ".join(f"{sys.executable} -c '{CHILD}'" for _ in range(2))
    parent = subprocess.Popen(["sh", "-c", f"{children} & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while (usage := tree_usage(parent.pid)).cpu_seconds < 1.9 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert usage.processes == 3  # sh and its two children
        assert usage.cpu_seconds >= 1.9  # one second each; the parent alone has next to none
        assert usage.peak_rss_bytes >= 2 * 60_000_000
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # sh and its two children: their own process group
        parent.wait()
