"""The metrics server over 127.0.0.1: /metrics, /proxyMode and /healthz."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kproxy.clock import FakeClock
from kproxy.healthz import ProxierHealth
from kproxy.metrics import MetricsServer, ProxyMetrics
from kproxy.rejections import RejectionLog
from kproxy.state import StateTracker


async def test_routes() -> None:
    tracker = StateTracker()
    metrics = ProxyMetrics(
        mode="iptables", node_name="n1", tracker=tracker, rejections=RejectionLog(),
        health=ProxierHealth(FakeClock(), 60.0), proxier=lambda: None,
    )
    server = MetricsServer(metrics, "127.0.0.1:0")
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/proxyMode") as response:
                assert (response.status, await response.text()) == (200, "iptables")
            async with session.get(f"{base}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok")
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                names = {f.name for f in text_string_to_metric_families(await response.text())}
    finally:
        await server.close()
    assert "kubeproxy_sync_proxy_rules_duration_seconds" in names
    assert "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds" in names
    # the process collector of the server's own registry
    assert "process_resident_memory_bytes" in names
