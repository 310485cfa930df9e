"""One worker process of `serve`: a Gateway on the supervisor's sockets until it is told to go.

Runs in the child the supervisor forked. SIGTERM: stop (messages under way finish, new clients
are answered 421); SIGUSR1: retire after a reload (stop accepting, let the messages under way
finish; the new workers take new clients). SIGINT and SIGHUP are the supervisor's to act on.
The worker dies with its supervisor (PR_SET_PDEATHSIG), so a supervisor killed outright
leaves no worker serving on its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys

from gateway.app import Gateway, WorkerRole
from gateway.config import Config, ConfigError
from gateway.eventloop import new_event_loop

READY = b"ready\n"
EXIT_START_FAILED = 2  # as `serve` exits for a configuration it cannot start with
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("gateway")


def die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop still reaches us
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def run_worker(config: Config, role: WorkerRole, ready_fd: int) -> int:
    """The worker's life, in the forked child; its exit status."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(config, role, ready_fd))
    except ConfigError as error:
        print(f"ppap-gateway: config error: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    except (ValueError, OSError) as error:
        print(f"ppap-gateway: cannot start: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_START_FAILED
    return 0


async def _serve(config: Config, role: WorkerRole, ready_fd: int) -> None:
    loop = asyncio.get_running_loop()
    told: asyncio.Future[bool] = loop.create_future()

    def go(refuse_new: bool) -> None:
        if not told.done():
            told.set_result(refuse_new)

    loop.add_signal_handler(signal.SIGTERM, go, True)
    loop.add_signal_handler(signal.SIGUSR1, go, False)
    gateway = Gateway(config, role=role)
    try:
        await gateway.start()
        os.write(ready_fd, READY)
        os.close(ready_fd)
        refuse_new = await told
        log.info("worker %d %s", os.getpid(), "stopping" if refuse_new else "retiring (reload)")
        await gateway.drain(refuse_new)
    finally:
        await gateway.stop()
