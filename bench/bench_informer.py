"""Startup cost at scale: list and parse 10,000 Services and 10,000 EndpointSlices.

A dev API server (separate process) holds N Services (2 ports each) and N EndpointSlices (10
endpoints each). Each measurement runs in a fresh client process, median of several runs:

* ``raw list``       — the paged LISTs only (500 per page), bytes fetched and JSON-decoded;
* ``kproxy startup`` — kproxy's real path: informers list, parse and validate, fill the
                       state tracker, until it is ready; plus the first snapshot;
* ``typed client``   — baseline in the same run: the same LISTs through kubernetes_asyncio's
                       generated model classes (what a client built on them would pay).

Usage: python bench/bench_informer.py [--services N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def make_objects(count: int) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for index in range(count):
        name = f"svc-{index}"
        namespace = f"ns-{index % 50}"
        objects.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "metrics", "port": 9090, "targetPort": 9090}]},
        })
        objects.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "metrics", "port": 9090, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [f"10.{(index >> 8) % 256}.{index % 256}.{e + 1}"],
                 "conditions": {"ready": True}, "nodeName": f"node-{e % 3}"}
                for e in range(10)
            ],
        })
    return objects


def serve(count: int, ready: Any, port_holder: Any) -> None:
    """The dev API server process: load the objects, then serve until killed."""
    from kproxy.devcluster.apiserver.server import DevApiServer

    async def main() -> None:
        server = DevApiServer(service_cidrs=("10.96.0.0/12",))
        namespaces = {o["metadata"]["namespace"] for o in make_objects(count)}
        server.load_objects(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
             for n in sorted(namespaces)] + make_objects(count)
        )
        await server.start("127.0.0.1", 0)
        port_holder.value = server.port
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


# -- client side, run in a fresh process per measurement ----------------------------------


async def measure_raw(kubeconfig: str) -> dict[str, float]:
    from kproxy.kube.transport import KubeTransport

    transport = await KubeTransport.connect(kubeconfig)
    started = time.perf_counter()
    total = 0
    for path in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"):
        token = ""
        while True:
            params = [("limit", "500")] + ([("continue", token)] if token else [])
            page = await transport.get_json(path, params, request_timeout=60)
            total += len(page["items"])
            token = page["metadata"].get("continue") or ""
            if not token:
                break
    elapsed = time.perf_counter() - started
    await transport.close()
    return {"seconds": elapsed, "objects": total}


async def measure_kproxy(kubeconfig: str) -> dict[str, float]:
    from kproxy.clock import SystemClock
    from kproxy.gctuning import configure_gc
    from kproxy.kube.transport import KubeTransport
    from kproxy.rejections import RejectionLog
    from kproxy.sources import ApiSource
    from kproxy.state import StateTracker

    configure_gc()  # as `kproxy run` does
    ready = asyncio.Event()
    tracker: StateTracker

    def on_change() -> None:
        if tracker.ready:
            ready.set()

    tracker = StateTracker(on_change=on_change)
    transport = await KubeTransport.connect(kubeconfig)
    started = time.perf_counter()
    source = ApiSource(transport, tracker, RejectionLog(), node_name="node-0", proxy_name="",
                       clock=SystemClock())
    task = asyncio.create_task(source.run())
    await ready.wait()
    listed = time.perf_counter() - started
    snapshot = tracker.snapshot()
    total = time.perf_counter() - started
    task.cancel()
    await transport.close()
    return {"seconds": total, "listed_seconds": listed, "service_ports": len(snapshot.services),
            "endpoints": sum(len(e) for e in snapshot.endpoints.values())}


async def measure_typed(kubeconfig: str) -> dict[str, float]:
    from kubernetes_asyncio import client, config

    await config.load_kube_config(config_file=kubeconfig)
    async with client.ApiClient() as api:
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        started = time.perf_counter()
        total = 0
        for lister in (core.list_service_for_all_namespaces,
                       discovery.list_endpoint_slice_for_all_namespaces):
            token = None
            while True:
                page = await lister(limit=500, _continue=token)
                total += len(page.items)
                token = page.metadata._continue
                if not token:
                    break
        return {"seconds": time.perf_counter() - started, "objects": total}


def client_main(mode: str, kubeconfig: str) -> None:
    measure = {"raw": measure_raw, "kproxy": measure_kproxy, "typed": measure_typed}[mode]
    result = asyncio.run(measure(kubeconfig))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_client(mode: str, kubeconfig: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--client", mode, "--kubeconfig", kubeconfig],
        check=True, capture_output=True, text=True,
    ).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--client", choices=("raw", "kproxy", "typed"))
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.kubeconfig)
        return

    context = multiprocessing.get_context("fork")
    ready, port = context.Event(), context.Value("i", 0)
    server = context.Process(target=serve, args=(args.services, ready, port), daemon=True)
    server.start()
    try:
        if not ready.wait(300):
            raise SystemExit("the dev API server did not start")
        from kproxy.devcluster.apiserver.kubeconfig import write_kubeconfig

        with tempfile.TemporaryDirectory() as workdir:
            kubeconfig = str(Path(workdir) / "kubeconfig")
            write_kubeconfig(kubeconfig, f"http://127.0.0.1:{port.value}")
            results: dict[str, list[dict[str, float]]] = {"raw": [], "kproxy": [], "typed": []}
            for _ in range(args.runs):
                for mode in results:
                    results[mode].append(run_client(mode, kubeconfig))
    finally:
        server.kill()

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    raw = median("raw", "seconds")
    print(f"list + parse {args.services} Services (2 ports) and {args.services} EndpointSlices "
          f"(10 endpoints), median of {args.runs} runs, one fresh client process each")
    print(f"{'path':<44}{'seconds':>9}{'x raw':>8}{'peak RSS MB':>13}")
    rows = [
        ("raw list (paged, JSON decoded)", "raw"),
        ("kproxy startup (list+parse+tracker+snapshot)", "kproxy"),
        ("typed client list (kubernetes_asyncio models)", "typed"),
    ]
    for label, mode in rows:
        seconds = median(mode, "seconds")
        print(f"{label:<44}{seconds:>9.3f}{seconds / raw:>8.2f}"
              f"{median(mode, 'peak_rss_mb'):>13.0f}")
    kproxy = results["kproxy"][0]
    print(f"tracker: {kproxy['service_ports']:.0f} service ports, "
          f"{kproxy['endpoints']:.0f} endpoints")


if __name__ == "__main__":
    main()
