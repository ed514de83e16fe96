"""userspace mode's control plane: how long a sync takes, against iptables mode's.

SERVICES ClusterIP services (one TCP port, ENDPOINTS endpoints each), synced by the
UserspaceProxier with real listeners and the restore backend, in a fresh network namespace
(needs root; the host's tables and ports are untouched): the first sync (a listener per
port, then one restore of the portals), a sync after one endpoint changed (the listener is
updated, nothing is written), a sync after one service was added (one listener, one
restore), and close() (listeners closed, portals removed). The baseline is iptables mode's
full sync of the same snapshot in the same namespace. Medians of --runs.

Run: .venv/bin/python bench/bench_userspace_sync.py [--services 1000,5000] [--endpoints 3]
     [--runs 5] [--backend legacy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from kproxy.clock import SystemClock
from kproxy.config import ProxyConfig
from kproxy.config.record import IptablesBackend
from kproxy.iptables.backend import Backend, open_backend
from kproxy.iptables.cleanup import cleanup
from kproxy.iptables.proxier import IptablesProxier
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
)
from kproxy.state import ResourceKind, StateTracker
from kproxy.userspace.limits import RelayLimits, raise_nofile_limit
from kproxy.userspace.proxier import UserspaceProxier

V4 = IPFamily.IPV4
CONFIG = ProxyConfig(hostname="node-1")


def service(index: int) -> ServiceInfo:
    name = f"svc-{index}"
    ip = f"10.96.{index // 250}.{index % 250 + 1}"
    return ServiceInfo("default", name, (ServicePort(
        ServicePortName("default", name, "http", Protocol.TCP), ServiceType.CLUSTER_IP,
        (ip,), 80, Protocol.TCP, 8080),))


def endpoints(index: int, count: int, generation: int = 0) -> EndpointSliceInfo:
    name = f"svc-{index}"
    return EndpointSliceInfo(
        "default", f"{name}-1", name, V4, (EndpointSlicePort("http", 8080, Protocol.TCP),),
        tuple(Endpoint(f"10.{100 + generation}.{index // 250}.{k * 50 + index % 50 + 1}", 0,
                       node_name="node-2") for k in range(count)))


def tracker_with(services: int, endpoint_count: int) -> StateTracker:
    tracker = StateTracker()
    for index in range(services):
        tracker.upsert_service(service(index))
        tracker.upsert_endpoint_slice(endpoints(index, endpoint_count))
    tracker.mark_listed(ResourceKind.SERVICES)
    tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    return tracker


async def timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


async def one_run(backend: Backend, services: int, endpoint_count: int) -> dict[str, float]:
    tracker = tracker_with(services, endpoint_count)
    figures: dict[str, float] = {}
    iptables = IptablesProxier(CONFIG, backend, clock=SystemClock(), families=(V4,))
    figures["iptables mode: full sync (baseline)"] = await timed(
        lambda: iptables.sync(tracker.snapshot()))
    await iptables.close()
    cleanup(backend, (V4,))
    proxier = UserspaceProxier(CONFIG, backend, clock=SystemClock(), limits=RelayLimits(),
                               families=(V4,))

    async def sync() -> None:
        snapshot = tracker.snapshot()
        result = await proxier.sync(snapshot)
        if not result.ok:
            raise RuntimeError(result.error)
        tracker.sync_succeeded(snapshot)

    figures["userspace: first sync (listeners + portals)"] = await timed(sync)
    tracker.upsert_endpoint_slice(endpoints(0, endpoint_count, generation=1))
    figures["userspace: one endpoint changed"] = await timed(sync)
    tracker.upsert_service(service(services))
    tracker.upsert_endpoint_slice(endpoints(services, endpoint_count))
    figures["userspace: one service added"] = await timed(sync)
    figures["userspace: close (listeners, then portals)"] = await timed(proxier.close)
    return figures


def bench_here(services: int, endpoint_count: int, runs: int, mode: str) -> dict[str, float]:
    raise_nofile_limit()
    backend = open_backend(IptablesBackend(mode))
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for label, seconds in asyncio.run(one_run(backend, services, endpoint_count)).items():
            samples.setdefault(label, []).append(seconds)
    return {label: statistics.median(values) for label, values in samples.items()}


def bench_in_namespace(services: int, args: argparse.Namespace) -> dict[str, float]:
    from kproxy.devcluster.netns import NetNamespace

    with NetNamespace("bench") as namespace, tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "XTABLES_LOCKFILE": os.path.join(directory, "xtables.lock")}
        done = namespace.run(
            [sys.executable, os.path.abspath(__file__), "--inside", "--services",
             str(services), "--endpoints", str(args.endpoints), "--runs", str(args.runs),
             "--backend", args.backend], timeout=1800, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-500:])
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="1000,5000")
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", default="legacy", choices=("legacy", "nft"))
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(bench_here(int(args.services), args.endpoints, args.runs,
                                    args.backend)))
        return
    if os.geteuid() != 0:
        print("skipped: needs root for a network namespace")
        return
    counts = [int(count) for count in args.services.split(",")]
    results = {count: bench_in_namespace(count, args) for count in counts}
    print(f"userspace mode sync, {args.backend} tables, {args.endpoints} endpoints per "
          f"service, median of {args.runs} runs (seconds)")
    print(f"{'operation':<46}" + "".join(f"{f'{count} svc':>12}" for count in counts))
    for label in results[counts[0]]:
        print(f"{label:<46}" + "".join(f"{results[count][label]:>12.3f}" for count in counts))


if __name__ == "__main__":
    main()
