"""The machine's real kubectl against the dev API server: get, apply, delete, no noise."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kproxy.devcluster.apiserver import ENDPOINT_SLICES, SERVICES, DevApiServer

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
WAIT = 60.0  # upper bound for one kubectl run (never asserted)

MANIFEST = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: metrics
    port: 9100
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["10.244.1.5"]
  conditions: {ready: true}
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Kubectl:
    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.kubeconfig = kubeconfig
        self.home = home

    async def __call__(self, *args: str) -> Result:
        assert KUBECTL is not None
        process = await asyncio.create_subprocess_exec(
            KUBECTL,
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.home / "cache"),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(self.home), "KUBECONFIG": str(self.kubeconfig)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT)
        assert process.returncode is not None
        return Result(process.returncode, stdout.decode(), stderr.decode())

    async def ok(self, *args: str) -> str:
        result = await self(*args)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
        return result.stdout


@pytest.fixture
async def server() -> AsyncIterator[DevApiServer]:
    server = DevApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubectl(server: DevApiServer, tmp_path: Path) -> Kubectl:
    return Kubectl(server.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)


async def test_get_services_in_all_namespaces(server: DevApiServer, kubectl: Kubectl) -> None:
    server.load_objects(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "api", "namespace": "team"},
                "spec": {"ports": [{"port": 443, "protocol": "TCP"}], "clusterIP": "10.96.0.20"},
            },
        ]
    )
    output = await kubectl.ok("get", "svc", "-A")
    header, row = output.splitlines()
    assert header.split()[:5] == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP"]
    assert row.split()[:6] == ["team", "api", "ClusterIP", "10.96.0.20", "<none>", "443/TCP"]


async def test_apply_get_and_delete_a_manifest(
    server: DevApiServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)
    created = await kubectl.ok("apply", "-f", str(manifest))
    assert created.splitlines() == [
        "service/web created",
        "endpointslice.discovery.k8s.io/web-abc created",
    ]
    web = server.store.get(SERVICES, "default", "web")
    assert web.body["spec"]["ports"][0]["nodePort"] >= 30000

    slices = await kubectl.ok("get", "endpointslices")
    assert slices.splitlines()[1].split()[:4] == ["web-abc", "IPv4", "8080", "10.244.1.5"]

    # Re-applying an edited manifest patches the Service in place: the allocated ClusterIP
    # and nodePorts stay, the removed port goes.
    manifest.write_text(
        MANIFEST.replace("targetPort: 8080", "targetPort: 9090").replace(
            "  - name: metrics\n    port: 9100\n", ""
        )
    )
    configured = await kubectl.ok("apply", "-f", str(manifest))
    assert "service/web configured" in configured
    updated = server.store.get(SERVICES, "default", "web").body["spec"]
    assert updated["clusterIP"] == web.body["spec"]["clusterIP"]
    assert [(p["name"], p["targetPort"]) for p in updated["ports"]] == [("http", 9090)]
    assert updated["ports"][0]["nodePort"] == web.body["spec"]["ports"][0]["nodePort"]

    as_json = json.loads(await kubectl.ok("get", "svc", "web", "-o", "json"))
    assert as_json["spec"]["ports"][0]["targetPort"] == 9090

    deleted = await kubectl.ok("delete", "-f", str(manifest))
    assert deleted.splitlines() == [
        'service "web" deleted',
        'endpointslice.discovery.k8s.io "web-abc" deleted',
    ]
    assert server.store.count(SERVICES) == 0
    assert server.store.count(ENDPOINT_SLICES) == 0


async def test_errors_read_like_a_real_server(kubectl: Kubectl, tmp_path: Path) -> None:
    result = await kubectl("get", "svc", "missing")
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error from server (NotFound): services "missing" not found'
    typo = tmp_path / "typo.yaml"
    typo.write_text(MANIFEST.replace("  selector:", "  selectr:"))
    result = await kubectl("apply", "-f", str(typo))
    assert result.returncode == 1
    assert 'strict decoding error: unknown field "spec.selectr"' in result.stderr


async def test_namespaces_and_nodes(server: DevApiServer, kubectl: Kubectl, tmp_path: Path) -> None:
    namespace = tmp_path / "namespace.yaml"
    namespace.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n")
    assert await kubectl.ok("apply", "-f", str(namespace)) == "namespace/team created\n"
    server.load_objects(
        [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "node-1"},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": "192.168.0.10"}],
                },
            }
        ]
    )
    namespaces = await kubectl.ok("get", "ns")
    assert [line.split()[0] for line in namespaces.splitlines()[1:]] == [
        "default",
        "kube-system",
        "team",
    ]
    nodes = await kubectl.ok("get", "nodes", "-o", "wide")
    assert nodes.splitlines()[1].split()[:2] == ["node-1", "Ready"]
    assert "192.168.0.10" in nodes


async def test_create_generators_post_protobuf(server: DevApiServer, kubectl: Kubectl) -> None:
    assert await kubectl.ok("create", "namespace", "team") == "namespace/team created\n"
    await kubectl.ok("create", "service", "nodeport", "web", "--tcp=80:8080", "-n", "team")
    await kubectl.ok("create", "service", "clusterip", "headless", "--clusterip=None")
    web = server.store.get(SERVICES, "team", "web").body["spec"]
    assert web["type"] == "NodePort"
    assert web["ports"][0]["port"] == 80 and web["ports"][0]["targetPort"] == 8080
    assert web["ports"][0]["nodePort"] >= 30000
    assert server.store.get(SERVICES, "default", "headless").body["spec"]["clusterIP"] == "None"
