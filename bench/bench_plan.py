"""Planning times of the iptables planner at 10,000 ClusterIP services x 10 endpoints (IPv4).

- full (cold): a new planner plans everything (first sync, or after a restart);
- full (warm): the same planner plans the same snapshot again (periodic full sync; port
  plans are reused, dispatch trees are rebuilt);
- render: ``restore.render_full`` of the cold plan (plan + render is what a first sync costs
  before iptables-restore runs);
- partial: one endpoint of one service replaced (the usual sync), and a no-op partial.

Medians of 5 runs (partial: of 200). Prints rule and chain counts per table too.
Run: .venv/bin/python bench/bench_plan.py
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import TypeVar

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.gctuning import configure_gc, freeze_long_lived
from kproxy.iptables.plan import IncrementalPlanner, plan_context
from kproxy.iptables.restore import render_full
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import Snapshot

SERVICES = 10_000
ENDPOINTS = 10
RUNS = 5
PARTIAL_RUNS = 200

T = TypeVar("T")


def make_snapshot(generation: int = 1) -> Snapshot:
    services: dict[ServicePortName, ServicePort] = {}
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for index in range(SERVICES):
        name = ServicePortName(f"ns-{index % 50}", f"svc-{index}", "http", Protocol.TCP)
        services[name] = ServicePort(
            name=name,
            type=ServiceType.CLUSTER_IP,
            cluster_ips=(f"10.96.{index // 256}.{index % 256}",),
            port=80,
            protocol=Protocol.TCP,
            target_port=8080,
        )
        base = index * ENDPOINTS
        endpoints[name] = tuple(
            Endpoint(
                f"10.{64 + (base + offset) // 65536}.{(base + offset) // 256 % 256}."
                f"{(base + offset) % 256}",
                8080,
                node_name=f"node-{(base + offset) % 100}",
            )
            for offset in range(ENDPOINTS)
        )
    return snapshot_of(services, endpoints, frozenset(), generation)


def snapshot_of(
    services: dict[ServicePortName, ServicePort],
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]],
    changed: frozenset[ServicePortName],
    generation: int,
) -> Snapshot:
    return Snapshot(
        generation=generation,
        services=MappingProxyType(services),
        endpoints=MappingProxyType(endpoints),
        node=NodeInfo("node-0", addresses=(("InternalIP", "192.168.0.10"),)),
        changed=changed,
        node_changed=False,
    )


def timed(action: Callable[[], T], *, collect: bool = True) -> tuple[float, T]:
    """Wall-clock seconds of ``action`` (after a collection, so runs start alike)."""
    if collect:
        gc.collect()
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def cpu_timed(action: Callable[[], T]) -> tuple[float, T]:
    """CPU seconds of ``action``: less disturbed than wall-clock on a busy machine."""
    gc.collect()
    start = time.process_time()
    result = action()
    return time.process_time() - start, result


def main() -> None:
    configure_gc()  # as kproxy runs
    config = ProxyConfig(
        hostname="node-0",
        cluster_cidrs=("10.64.0.0/10",),
        detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
    )
    snapshot = make_snapshot()
    context = plan_context(config, snapshot.node, IPFamily.IPV4)
    freeze_long_lived()  # the snapshot is long-lived state, as after kproxy's first sync

    cold: list[float] = []
    cold_cpu: list[float] = []
    renders: list[float] = []
    planner = IncrementalPlanner(context)
    ruleset = planner.full(snapshot)
    for _ in range(RUNS):
        del planner, ruleset
        planner = IncrementalPlanner(context)
        seconds, ruleset = timed(lambda: planner.full(snapshot))  # noqa: B023
        cold.append(seconds)
        seconds, _ = timed(lambda: render_full(ruleset))  # noqa: B023
        renders.append(seconds)
    for _ in range(RUNS):
        cold_cpu.append(cpu_timed(lambda: IncrementalPlanner(context).full(snapshot))[0])
    warm = [timed(lambda: planner.full(snapshot))[0] for _ in range(RUNS)]

    services = dict(snapshot.services)
    endpoints = dict(snapshot.endpoints)
    names = list(services)
    partial_times: list[float] = []
    written = deleted = 0
    for run in range(PARTIAL_RUNS):
        name = names[(run * 7919) % len(names)]
        old = endpoints[name]
        replacement = Endpoint(f"10.200.{run // 256 % 256}.{run % 256}", 8080, node_name="node-1")
        endpoints[name] = (*old[1:], replacement)
        changed = snapshot_of(services, endpoints, frozenset({name}), run + 2)
        seconds, delta = timed(lambda: planner.partial(changed), collect=False)  # noqa: B023
        partial_times.append(seconds)
        written = sum(len(chains) for chains in delta.write.values())
        deleted = sum(len(chains) for chains in delta.delete.values())
    idle = snapshot_of(services, endpoints, frozenset(), PARTIAL_RUNS + 2)
    noop_times = [timed(lambda: planner.partial(idle), collect=False)[0]
                  for _ in range(PARTIAL_RUNS)]

    print(f"iptables plan, {SERVICES:,} ClusterIP services x {ENDPOINTS} endpoints, IPv4")
    print(
        f"  full, cold planner     {statistics.median(cold) * 1000:8.1f} ms  (median of {RUNS};"
        f" min {min(cold) * 1000:.1f}; CPU {statistics.median(cold_cpu) * 1000:.1f})"
    )
    print(f"  full, warm planner     {statistics.median(warm) * 1000:8.1f} ms")
    print(f"  render_full            {statistics.median(renders) * 1000:8.1f} ms")
    print(
        "  cold plan + render     "
        f"{(statistics.median(cold) + statistics.median(renders)) * 1000:8.1f} ms"
    )
    print(
        f"  partial, 1 endpoint    {statistics.median(partial_times) * 1000:8.3f} ms"
        f"  (median of {PARTIAL_RUNS}; writes {written} chains, deletes {deleted})"
    )
    print(f"  partial, no change     {statistics.median(noop_times) * 1000:8.3f} ms")
    print("  rules per table:")
    for table, rules in ruleset.tables.items():
        count = sum(len(chain.rules) for chain in rules.chains.values())
        print(f"    {table.value:7} {len(rules.chains):8,} chains {count:9,} rules")
    print(f"    total   {ruleset.rule_count:>25,} rules")


if __name__ == "__main__":
    main()
