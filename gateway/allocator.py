"""Give big freed buffers back to the kernel at once, so that the gateway's resident memory
follows what it holds now, not the largest mail it ever held.

glibc's malloc serves a large block from mmap only until one such block is freed; then it
raises its threshold (up to 32 MiB) and serves the next ones from its heaps, one heap per
thread that asked, which it keeps. A mail of some megabytes is copied, parsed and signed in the
executor's threads, so each of them ended up holding a mail's worth of freed memory. A fixed
threshold keeps every block of 1 MiB and more in mmap: freed, it leaves. Elsewhere than glibc
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("gateway")

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BLOCK = 1024 * 1024


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Fix malloc's mmap threshold at `threshold` bytes; whether the C library took it."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (or no C library found): its allocator is left as it is
    taken = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not taken:
        log.warning("malloc kept its own mmap threshold: peak memory may stay high after big mails")
    return taken
