"""The event loop the gateway runs on: uvloop (libuv, written in Cython) where it is installed,
asyncio's own otherwise. One choice for `serve`'s workers and for the tests that start a
Gateway in-process, so what the tests run is what ships.

uvloop does the socket work the gateway does most of (reading DATA, writing replies and copies)
in C: measured by `make bench-load` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
    uvloop = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def name() -> str:
    return "uvloop" if uvloop is not None else "asyncio"
