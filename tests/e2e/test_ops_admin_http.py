"""Admin listener: /healthz verdicts from real store and next-hop probes, /metrics, headers."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Sequence

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.ops.admin import (
    HealthCheck,
    build_admin_app,
    next_hop_check,
    store_writable_check,
)
from gateway.ops.metrics import GatewayMetrics
from gateway.outbound.folder import FolderNextHop
from gateway.outbound.smtp import SmtpNextHop
from gateway.store.db import Database
from tests.support.sink import RecordingSink

Scenario = Callable[[TestClient], Awaitable[Any]]


def run_app(
    checks: Sequence[HealthCheck], scenario: Scenario, metrics: GatewayMetrics | None = None
) -> Any:
    async def main() -> Any:
        app = build_admin_app(metrics=metrics or GatewayMetrics(), health_checks=checks)
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


async def get_json(client: TestClient, path: str = "/healthz") -> tuple[int, dict, str]:
    response = await client.get(path)
    return response.status, await response.json(), response.headers.get("Cache-Control", "")


def smtp_hop(port: int) -> SmtpNextHop:
    return SmtpNextHop("127.0.0.1", port, starttls="off", timeout=2.0, helo_name="gw.test")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "meta.db")
    yield database
    database.close()


def test_healthz_ok_with_writable_store_and_outbox_next_hop(tmp_path: Path, db: Database) -> None:
    checks = [store_writable_check(tmp_path, db), next_hop_check(FolderNextHop(tmp_path / "out"))]
    status, body, cache = run_app(checks, get_json)
    assert (status, body) == (200, {"status": "ok", "checks": {"store": "ok", "next_hop": "ok"}})
    assert cache == "no-store"
    assert not list(tmp_path.glob(".healthz-*"))  # the probe file is removed


def test_healthz_ok_with_reachable_smtp_next_hop(tmp_path: Path, db: Database) -> None:
    with RecordingSink() as sink:
        hop = smtp_hop(sink.port)

        async def scenario(client: TestClient):
            try:
                return await get_json(client)
            finally:
                await hop.close()

        checks = [store_writable_check(tmp_path, db), next_hop_check(hop)]
        status, body, _ = run_app(checks, scenario)
    assert status == 200 and body["checks"] == {"store": "ok", "next_hop": "ok"}
    assert sink.messages == []


def test_healthz_503_when_data_dir_is_a_file(tmp_path: Path, db: Database) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_bytes(b"")
    checks = [store_writable_check(not_a_dir, db), next_hop_check(FolderNextHop(tmp_path / "out"))]
    status, body, cache = run_app(checks, get_json)
    assert status == 503 and cache == "no-store"
    assert body["status"] == "failing"
    assert body["checks"]["next_hop"] == "ok"
    assert body["checks"]["store"] == "data dir not writable: Not a directory"


def test_healthz_503_when_database_is_closed(tmp_path: Path) -> None:
    closed = Database(tmp_path / "meta.db")
    closed.close()
    status, body, _ = run_app([store_writable_check(tmp_path, closed)], get_json)
    assert status == 503
    assert body["checks"]["store"].startswith("database unusable: ")


def test_healthz_503_when_smtp_next_hop_is_down(
    closed_port: int, tmp_path: Path, db: Database
) -> None:
    hop = smtp_hop(closed_port)
    status, body, _ = run_app([store_writable_check(tmp_path, db), next_hop_check(hop)], get_json)
    assert status == 503
    assert body["checks"] == {
        "store": "ok", "next_hop": f"smtp://127.0.0.1:{closed_port} (starttls off) not reachable",
    }


def test_healthz_503_when_a_check_hangs_past_its_timeout() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    status, body, _ = run_app([HealthCheck("slow", hangs, timeout=0.05)], get_json)
    assert (status, body) == (503, {"status": "failing", "checks": {"slow": "timed out"}})


def test_store_check_times_out_while_database_is_locked_then_recovers(
    tmp_path: Path, db: Database
) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold_write_lock() -> None:
        with db.transaction():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    holding.wait(5)

    async def scenario(client: TestClient) -> list[tuple[int, dict, str]]:
        answers = [await get_json(client), await get_json(client)]
        release.set()
        await asyncio.sleep(0.2)  # the probe still running in the background finishes
        answers.append(await get_json(client))
        return answers

    try:
        answers = run_app([store_writable_check(tmp_path, db, timeout=0.1)], scenario)
    finally:
        release.set()
        holder.join()
    assert [(status, body["checks"]["store"]) for status, body, _ in answers] == [
        (503, "timed out"), (503, "timed out"), (200, "ok"),
    ]


def test_failing_probe_reasons_are_one_short_line_without_traceback() -> None:
    async def raises() -> None:
        raise RuntimeError("disk\non fire\r\n" + "x" * 1000)

    async def returns_reason() -> str:
        return "queue\nfull"

    checks = [HealthCheck("raises", raises), HealthCheck("reason", returns_reason)]
    status, body, _ = run_app(checks, get_json)
    assert status == 503
    assert body["checks"]["reason"] == "queue full"
    raised = body["checks"]["raises"]
    assert raised.startswith("RuntimeError: disk on fire xxx") and len(raised) == 200
    assert "Traceback" not in raised and "\n" not in raised


def test_concurrent_requests_share_one_run_of_the_checks() -> None:
    runs = 0

    async def slow_ok() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)

    async def scenario(client: TestClient) -> list[int]:
        responses = await asyncio.gather(*(client.get("/healthz") for _ in range(5)))
        return [response.status for response in responses]

    assert run_app([HealthCheck("slow", slow_ok)], scenario) == [200] * 5
    assert runs == 1


def test_metrics_endpoint_serves_prometheus_text_uncached() -> None:
    metrics = GatewayMetrics()
    metrics.message_relayed("convert", 250, 0.1, bytes_stored=10, links_created=1)

    async def scenario(client: TestClient):
        response = await client.get("/metrics")
        return response.status, response.headers, await response.text()

    status, headers, text = run_app([], scenario, metrics)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Cache-Control"] == "no-store"
    assert 'ppap_messages_total{decision="convert"} 1.0' in text


def test_unknown_paths_are_404_and_uncached() -> None:
    async def scenario(client: TestClient):
        response = await client.get("/admin")
        return response.status, response.headers.get("Cache-Control")

    assert run_app([], scenario) == (404, "no-store")
