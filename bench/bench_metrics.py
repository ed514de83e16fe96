"""What the metrics cost a proxy at 10,000 Services (2 ports, 10 endpoints each, every tenth
with externalTrafficPolicy Local): the per-sync observation after a full and after a
one-endpoint change, and one /metrics scrape, against the tracker's own snapshot() as the
baseline each sync pays anyway. Medians of 5 runs.
Run: .venv/bin/python bench/bench_metrics.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from kproxy.clock import SystemClock
from kproxy.healthz import ProxierHealth
from kproxy.iptables.proxier import SyncRecord
from kproxy.metrics import ProxyMetrics
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
    TrafficPolicy,
)
from kproxy.proxier import SyncResult
from kproxy.rejections import RejectionLog
from kproxy.state import ResourceKind, StateTracker

SERVICES = 10_000
ENDPOINTS = 10
RUNS = 5
NODE = "node-1"


class Proxier:
    def __init__(self) -> None:
        self.record = SyncRecord()


def build() -> StateTracker:
    tracker = StateTracker()
    for index in range(SERVICES):
        policy = TrafficPolicy.LOCAL if index % 10 == 0 else TrafficPolicy.CLUSTER
        ports = tuple(
            ServicePort(
                name=ServicePortName("default", f"svc-{index}", name, Protocol.TCP),
                type=ServiceType.NODE_PORT, cluster_ips=(f"10.96.{index // 250}.{index % 250}",),
                port=number, protocol=Protocol.TCP, target_port=8080,
                node_port=30000 + (index * 2 + offset) % 2000, external_traffic_policy=policy,
            )
            for offset, (name, number) in enumerate((("http", 80), ("https", 443)))
        )
        tracker.upsert_service(ServiceInfo("default", f"svc-{index}", ports))
        tracker.upsert_endpoint_slice(slice_of(index, ENDPOINTS))
    tracker.mark_listed(ResourceKind.SERVICES)
    tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    return tracker


def slice_of(index: int, count: int) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace="default", name=f"svc-{index}-1", service_name=f"svc-{index}",
        address_type=IPFamily.IPV4,
        ports=(EndpointSlicePort("http", 8080, Protocol.TCP),
               EndpointSlicePort("https", 8443, Protocol.TCP)),
        endpoints=tuple(Endpoint(ip=f"10.{index // 250 % 250}.{index % 250}.{k}", port=0,
                                 node_name=f"node-{k + 2}") for k in range(count)),
    )


def median_ms(action: Callable[[], object]) -> float:
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000


def main() -> None:
    tracker = build()
    proxier = Proxier()
    metrics = ProxyMetrics(
        mode="iptables", node_name=NODE, tracker=tracker, rejections=RejectionLog(),
        health=ProxierHealth(SystemClock(), 60.0), proxier=lambda: proxier,
    )
    full = SyncResult(True, True, SERVICES * 2, SERVICES * 2 * ENDPOINTS)
    partial = SyncResult(True, False, SERVICES * 2, SERVICES * 2 * ENDPOINTS)
    snapshot = tracker.snapshot()

    def first_observation() -> None:
        fresh = ProxyMetrics(
            mode="iptables", node_name=NODE, tracker=tracker, rejections=RejectionLog(),
            health=ProxierHealth(SystemClock(), 60.0), proxier=lambda: proxier,
        )
        fresh.observe_sync(snapshot, full, 0.5)

    metrics.observe_sync(snapshot, full, 0.5)
    tracker.sync_succeeded(snapshot)
    changes = iter(range(10**6))

    def one_change_snapshot() -> object:
        tracker.upsert_endpoint_slice(slice_of(next(changes) % SERVICES, ENDPOINTS - 1))
        return tracker.snapshot()

    def observe_one_change() -> None:
        changed = tracker.snapshot()
        metrics.observe_sync(changed, partial, 0.001)
        tracker.sync_succeeded(changed)

    baseline = median_ms(one_change_snapshot)
    rows = [
        ("tracker snapshot() after one endpoint change (baseline)", baseline),
        ("observe a full sync (every port)", median_ms(first_observation)),
    ]
    observed = []
    for _ in range(RUNS):
        one_change_snapshot()
        started = time.perf_counter()
        observe_one_change()
        observed.append(time.perf_counter() - started)
    rows.append(("observe a sync of one endpoint change", statistics.median(observed) * 1000))
    rows.append(("one /metrics scrape (render)", median_ms(metrics.render)))
    print(f"{SERVICES} services x 2 ports, {ENDPOINTS} endpoints each; medians of {RUNS} runs")
    print(f"| {'step':<58} | {'ms':>8} | {'x baseline':>10} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 12}|")
    for name, ms in rows:
        print(f"| {name:<58} | {ms:8.2f} | {ms / baseline:10.2f} |")


if __name__ == "__main__":
    main()
