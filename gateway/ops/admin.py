"""The operations listener: GET /healthz (is the gateway able to take mail?) and GET /metrics.

A health check is a name, an async probe and a timeout. A probe returns None when healthy, or
a short reason (returned or raised) when not; a probe that overruns its timeout fails as
"timed out". Reasons are one short printable line each, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Sequence, TypeVar

from aiohttp import web

from gateway.ops.metrics import GatewayMetrics
from gateway.outbound.hop import NextHop
from gateway.store.db import Database

Probe = Callable[[], Awaitable[str | None]]
T = TypeVar("T")
_REASON_LIMIT = 200


@dataclass(frozen=True)
class HealthCheck:
    name: str
    probe: Probe
    timeout: float = 5.0


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return "".join(c if c.isprintable() else "?" for c in flat)[:_REASON_LIMIT] or "failed"


def _reason_for(error: BaseException) -> str:
    detail = str(error)
    return _one_line(f"{type(error).__name__}: {detail}" if detail else type(error).__name__)


async def run_check(check: HealthCheck) -> str | None:
    """None if the check passed, else why it did not."""
    try:
        reason = await asyncio.wait_for(check.probe(), check.timeout)
    except TimeoutError:
        return "timed out"
    except Exception as error:  # any failure of a probe is an unhealthy answer, not a 500
        return _reason_for(error)
    return None if reason is None else _one_line(str(reason))


async def run_checks(checks: Sequence[HealthCheck]) -> dict[str, str | None]:
    results = await asyncio.gather(*(run_check(check) for check in checks))
    return {check.name: result for check, result in zip(checks, results)}


def _single_flight(start: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """Share one run of `start` among all callers until it ends; never cancel it midway.

    `start` must not raise (an exception nobody retrieves would be logged as lost). A run
    that outlives its caller's timeout goes on in the background (a hung disk keeps one
    thread, a slow next hop one connection attempt); later callers wait for that same run
    instead of piling up more, and one client hanging up cannot cancel it for the others.
    """
    running: list[asyncio.Future[T]] = []

    async def shared() -> T:
        if not running or running[0].done():
            running[:] = [asyncio.ensure_future(start())]
        return await asyncio.shield(running[0])

    return shared


def _json(status: int, payload: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")


def build_admin_app(
    *, metrics: GatewayMetrics, health_checks: Sequence[HealthCheck]
) -> web.Application:
    names = [check.name for check in health_checks]
    if len(set(names)) != len(names):
        raise ValueError(f"health check names must be unique: {names}")
    checks = tuple(health_checks)
    shared_run = _single_flight(lambda: run_checks(checks))

    async def healthz(_request: web.Request) -> web.Response:
        results = await shared_run()
        answers = {name: reason or "ok" for name, reason in results.items()}
        if any(reason is not None for reason in results.values()):
            return _json(503, {"status": "failing", "checks": answers})
        return _json(200, {"status": "ok", "checks": answers})

    async def metrics_text(_request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def no_store(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Cache-Control"] = "no-store"

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    app.on_response_prepare.append(no_store)
    return app


def _probe_store(data_dir: Path, db: Database) -> str | None:
    probe = data_dir / f".healthz-{secrets.token_hex(8)}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"ok")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            probe.unlink(missing_ok=True)
    except OSError as error:
        return f"data dir not writable: {error.strerror or type(error).__name__}"
    try:
        db.transfer("healthz-probe")  # any read will do: it fails if the database is unusable
    except Exception as error:  # reported, not raised: nobody may be left to retrieve it
        return f"database unusable: {_reason_for(error)}"
    return None


def store_writable_check(data_dir: Path, db: Database, timeout: float = 5.0) -> HealthCheck:
    """Write, fsync and delete a file in the data dir, then read the database (in a thread)."""
    return HealthCheck(
        "store", _single_flight(lambda: asyncio.to_thread(_probe_store, data_dir, db)), timeout
    )


def next_hop_check(next_hop: NextHop, timeout: float = 5.0) -> HealthCheck:
    """The next hop takes connections (SMTP: connects and says EHLO; outbox: writable)."""

    async def reachable() -> str | None:
        try:
            if await next_hop.check():
                return None
        except Exception as error:  # reported, not raised: nobody may be left to retrieve it
            return _reason_for(error)
        return f"{next_hop.describe()} not reachable"

    return HealthCheck("next_hop", _single_flight(reachable), timeout)
