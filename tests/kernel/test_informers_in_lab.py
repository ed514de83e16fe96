"""The spine end to end in a real 2-node lab: the dev API server runs in the control-plane
namespace, kproxy's informers and state tracker run in node 2's namespace and reach it over
the lab fabric, and the test drives objects through the API (over the server's Unix socket)
and reads what the tracker sees — also across a server restart and a forced 410 Gone.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kproxy.devcluster.client import DevApiClient
from kproxy.devcluster.cluster import DevApiProcess, TrackerView, endpoints_of
from kproxy.devcluster.lab import Lab

pytestmark = pytest.mark.kernel

def service(name: str, port: int, target: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target}]},
    }


def endpoint_slice(name: str, service_name: str, *ips: str, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips],
    }


WEB = "default/web:http/TCP"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(nodes=2, outside=False, control_plane=True) as built:
        yield built


@pytest.fixture
def devapi(lab: Lab, tmp_path: Path) -> Iterator[DevApiProcess]:
    assert lab.control_plane is not None
    server = DevApiProcess(lab.control_plane, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(devapi: DevApiProcess) -> AsyncIterator[DevApiClient]:
    async with DevApiClient(unix_path=str(devapi.socket)) as api_client:
        yield api_client


@pytest.fixture
def tracker_on_node2(lab: Lab, devapi: DevApiProcess) -> Iterator[TrackerView]:
    view = TrackerView(lab.nodes[1], devapi.kubeconfig)
    yield view
    view.stop()


async def test_objects_reach_the_tracker_across_restart_and_410(
    lab: Lab, devapi: DevApiProcess, client: DevApiClient, tracker_on_node2: TrackerView
) -> None:
    stream = tracker_on_node2
    node_name = lab.nodes[1].name
    stream.wait_for(lambda s: s.get("ready") is True, "first lists done")

    # Create: a Service, its EndpointSlice, and this node's Node object.
    created = await client.create(service("web", 80))
    cluster_ip = created["spec"]["clusterIP"]
    await client.create(endpoint_slice("web-1", "web", "10.244.1.2", "10.244.2.2"))
    await client.create({"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": node_name,
                                      "labels": {"topology.kubernetes.io/zone": "zone-b"}},
                         "spec": {"podCIDRs": ["10.244.2.0/24"]}})
    state = stream.wait_for(
        lambda s: endpoints_of(s, WEB) == ["10.244.1.2:8080", "10.244.2.2:8080"]
        and WEB in s["services"] and s.get("node") is not None,
        "service, endpoints and node",
    )
    assert state["services"][WEB]["cluster_ips"] == [cluster_ip]
    assert state["services"][WEB]["port"] == 80
    assert state["node"] == {"name": node_name, "zone": "zone-b", "pod_cidrs": ["10.244.2.0/24"]}

    # Update: the service port and the endpoints (one more, one not ready).
    await client.merge_patch("v1", "Service", "web", {"spec": {"ports": [
        {"name": "http", "port": 8000, "targetPort": 8080}]}})
    await client.replace(endpoint_slice("web-1", "web", "10.244.1.2", "10.244.1.3"))
    stream.wait_for(
        lambda s: s["services"].get(WEB, {}).get("port") == 8000
        and endpoints_of(s, WEB) == ["10.244.1.2:8080", "10.244.1.3:8080"],
        "updated port and endpoints",
    )

    # Delete the slice, then the service.
    await client.delete("discovery.k8s.io/v1", "EndpointSlice", "web-1")
    stream.wait_for(lambda s: WEB not in s["endpoints"], "slice deleted")
    await client.delete("v1", "Service", "web")
    stream.wait_for(lambda s: WEB not in s["services"], "service deleted")

    # Restart the API server (state file kept). Objects changed while it is down are seen
    # through the informers' relist; the watch resumes afterwards.
    await client.create(service("api", 90))
    stream.wait_for(lambda s: "default/api:http/TCP" in s["services"], "api created")
    lists_before = stream.latest["informers"]["services"]["lists"]
    devapi.stop()
    devapi.start()
    async with DevApiClient(unix_path=str(devapi.socket)) as restarted:
        await restarted.delete("v1", "Service", "api")
        await restarted.create(service("after-restart", 91))
        stream.wait_for(
            lambda s: "default/after-restart:http/TCP" in s["services"]
            and "default/api:http/TCP" not in s["services"]
            and s["informers"]["services"]["lists"] > lists_before,
            "changes across a restart, after a relist",
        )

        # Forced 410 Gone: every version the informers hold expires at once.
        expired_before = stream.latest["informers"]["services"]["expired"]
        devapi.send_signal(signal.SIGUSR1)
        # (An informer whose stream ends with a bookmark already carrying the expired version
        # may resume without a 410; the Service informer's 410 is the one checked here.)
        stream.wait_for(
            lambda s: s["informers"]["services"]["expired"] > expired_before,
            "410 Gone seen by the Service informer",
        )
        await restarted.create(service("after-410", 92))
        await restarted.create(endpoint_slice("after-410-1", "after-410", "10.244.1.9"))
        stream.wait_for(
            lambda s: endpoints_of(s, "default/after-410:http/TCP") == ["10.244.1.9:8080"]
            and "default/after-restart:http/TCP" in s["services"],
            "the watch resumes after the relist",
        )
