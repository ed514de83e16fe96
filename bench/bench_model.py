"""Parse and merge times of the object model at 10,000 Services and EndpointSlices.

Objects are plain dicts, as ``json.loads`` gives them. "cold" clears the address caches
before every run (first list after start); "warm" keeps them (re-parsing on updates).
Run: .venv/bin/python bench/bench_model.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from kproxy.model.addresses import clear_caches
from kproxy.model.endpoints import merge_endpoint_slices
from kproxy.model.endpointslice import parse_endpoint_slice
from kproxy.model.service import parse_service
from kproxy.model.types import EndpointSliceInfo

SERVICES = 10_000
ENDPOINTS_PER_SLICE = 10
RUNS = 5


def make_service(index: int) -> dict[str, Any]:
    cluster_ip = f"10.96.{index // 256}.{index % 256}"
    service_type = ("ClusterIP", "NodePort", "LoadBalancer")[index % 3]
    spec: dict[str, Any] = {
        "type": service_type,
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "selector": {"app": f"app-{index}"},
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Cluster",
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "https", "protocol": "TCP", "port": 443, "targetPort": "https"},
        ],
    }
    status: dict[str, Any] = {"loadBalancer": {}}
    if service_type != "ClusterIP":
        spec["externalTrafficPolicy"] = "Cluster"
        for offset, port in enumerate(spec["ports"]):
            port["nodePort"] = 30000 + (index * 2 + offset) % 2768
    if service_type == "LoadBalancer":
        spec["loadBalancerSourceRanges"] = ["192.168.0.0/16"]
        status["loadBalancer"] = {"ingress": [{"ip": f"203.0.{index // 256 % 256}.{index % 256}"}]}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"svc-{index}",
            "namespace": f"ns-{index % 50}",
            "uid": f"00000000-0000-0000-0000-{index:012d}",
            "resourceVersion": str(1000 + index),
            "labels": {"app": f"app-{index}"},
        },
        "spec": spec,
        "status": status,
    }


def make_slice(index: int) -> dict[str, Any]:
    endpoints = []
    for number in range(ENDPOINTS_PER_SLICE):
        pod = index * ENDPOINTS_PER_SLICE + number
        endpoints.append(
            {
                "addresses": [f"10.{pod // 65536 % 256}.{pod // 256 % 256}.{pod % 256}"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{pod % 100}",
                "zone": f"zone-{pod % 3}",
                "targetRef": {"kind": "Pod", "name": f"pod-{pod}", "namespace": "ns"},
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{index}-abcde",
            "namespace": f"ns-{index % 50}",
            "labels": {
                "kubernetes.io/service-name": f"svc-{index}",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2025-01-02T03:04:05Z"
            },
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 8080},
            {"name": "https", "protocol": "TCP", "port": 8443},
        ],
        "endpoints": endpoints,
    }


def median_seconds(work: Callable[[], object], *, cold: bool) -> float:
    timings = []
    for _ in range(RUNS):
        if cold:
            clear_caches()
        start = time.perf_counter()
        work()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    services = [make_service(i) for i in range(SERVICES)]
    slices = [make_slice(i) for i in range(SERVICES)]
    parsed_slices: list[EndpointSliceInfo] = []
    for raw in slices:
        value = parse_endpoint_slice(raw).value
        assert value is not None
        parsed_slices.append(value)

    def parse_services() -> None:
        for raw in services:
            parse_service(raw)

    def parse_slices() -> None:
        for raw in slices:
            parse_endpoint_slice(raw)

    def merge_each_service() -> None:
        for parsed in parsed_slices:
            merge_endpoint_slices((parsed,))

    rows = [
        (f"parse {SERVICES} Services (2 ports)", parse_services),
        (f"parse {SERVICES} EndpointSlices (x{ENDPOINTS_PER_SLICE} endpoints)", parse_slices),
        (f"merge {SERVICES} services (1 slice, 2 ports each)", merge_each_service),
    ]
    print(f"{'operation':<52} {'cold ms':>9} {'warm ms':>9}  (median of {RUNS})")
    for label, work in rows:
        cold = median_seconds(work, cold=True)
        warm = median_seconds(work, cold=False)
        print(f"{label:<52} {cold * 1000:>9.1f} {warm * 1000:>9.1f}")


if __name__ == "__main__":
    main()
