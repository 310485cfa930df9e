"""The admin listener's app as it is built (its answers over HTTP, from real store and next-hop
probes: tests/e2e/test_ops_admin_http.py)."""

from __future__ import annotations

import pytest

from gateway.ops.admin import HealthCheck, build_admin_app
from gateway.ops.metrics import GatewayMetrics


def test_duplicate_check_names_are_refused() -> None:
    async def ok() -> None:
        return None

    with pytest.raises(ValueError, match="unique"):
        build_admin_app(metrics=GatewayMetrics(), health_checks=[HealthCheck("a", ok)] * 2)
