"""The dev API server enforcing RBAC: kproxy's informers run through deploy/rbac.yaml's role
with no refused request; anything outside the role is 403 with Kubernetes' Status body."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kproxy.clock import SystemClock
from kproxy.devcluster.apiserver import DevApiServer
from kproxy.devcluster.apiserver.access import REFUSALS_PATH, AccessControl
from kproxy.devcluster.apiserver.command import access_control
from kproxy.devcluster.apiserver.manifests import read_manifests
from kproxy.devcluster.apiserver.rbac import (
    ANONYMOUS,
    PathRequest,
    Policy,
    RbacError,
    ResourceRequest,
    UserInfo,
)
from kproxy.kube.transport import KubeTransport
from kproxy.rejections import RejectionLog
from kproxy.sources import ApiSource
from kproxy.state import StateTracker

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
KPROXY = "system:serviceaccount:kube-system:kproxy"
NODE = "node-a"
OBJECTS: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "web-1", "namespace": "default",
                  "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
     "endpoints": [{"addresses": ["10.244.1.2"]}]},
]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DevApiServer]:
    access = access_control([str(RBAC)], None, None)
    assert access is not None
    api = DevApiServer(bookmark_interval=0.05, access=access)
    await api.start(unix_path=str(tmp_path / "api.sock"))
    api.load_objects(OBJECTS)
    try:
        yield api
    finally:
        await api.stop()


def refusals(server: DevApiServer) -> AccessControl:
    assert server.access is not None
    return server.access


async def test_kproxys_informers_run_within_the_role(server: DevApiServer, tmp_path: Path) -> None:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", user=KPROXY)
    transport = await KubeTransport.connect(str(kubeconfig))
    complete = asyncio.Event()

    def on_change() -> None:
        if tracker.ready and tracker.node is not None:
            complete.set()

    tracker = StateTracker(on_change=on_change)
    source = ApiSource(transport, tracker, RejectionLog(), node_name=NODE, proxy_name="",
                       clock=SystemClock())
    running = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(20):
            await complete.wait()
        await asyncio.sleep(0.2)  # the watches are open and have had bookmarks
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await transport.close()
    assert tracker.node is not None and tracker.node.name == NODE
    assert len(tracker.snapshot().services) == 1
    assert refusals(server).refusals == []


async def request(server: DevApiServer, method: str, path: str, token: str | None,
                  body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.request(
        method, server.url + path, headers=headers, json=body
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_outside_the_role_is_forbidden(server: DevApiServer) -> None:
    token = refusals(server).token_of(KPROXY)
    status, body = await request(server, "POST", "/api/v1/namespaces/default/services", token,
                                 {"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": "x"}, "spec": {"ports": [{"port": 1}]}})
    assert status == 403
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'services is forbidden: User "{KPROXY}" cannot create resource "services" '
                   'in API group "" in the namespace "default"',
        "reason": "Forbidden", "details": {"kind": "services"}, "code": 403,
    }
    status, body = await request(server, "GET", f"/api/v1/nodes/{NODE}", token)
    assert status == 403
    assert body["message"] == (f'nodes "{NODE}" is forbidden: User "{KPROXY}" cannot get '
                               'resource "nodes" in API group "" at the cluster scope')
    assert body["details"] == {"name": NODE, "kind": "nodes"}
    status, body = await request(server, "PATCH", "/apis/discovery.k8s.io/v1/namespaces/default"
                                 "/endpointslices/web-1", token, {})
    assert status == 403
    assert body["details"] == {"name": "web-1", "group": "discovery.k8s.io",
                               "kind": "endpointslices"}
    assert refusals(server).forbidden_count == 3
    # Within the role, and discovery (granted to every authenticated user), go through.
    assert (await request(server, "GET", "/api/v1/services", token))[0] == 200
    assert (await request(server, "GET", "/apis", token))[0] == 200
    # The refusals can be read over HTTP.
    status, report = await request(server, "GET", REFUSALS_PATH, None)
    assert (status, report["forbidden"], report["unauthorized"]) == (200, 3, 0)
    assert report["refusals"][0]["verb"] == "create"


async def test_anonymous_unknown_tokens_and_the_admin_socket(
    server: DevApiServer, tmp_path: Path
) -> None:
    status, body = await request(server, "GET", "/api/v1/services", None)
    assert status == 403 and 'User "system:anonymous" cannot list' in body["message"]
    assert (await request(server, "GET", "/version", None))[0] == 200
    status, body = await request(server, "GET", "/api/v1/services", "not-a-token")
    assert (status, body["reason"], body["message"]) == (401, "Unauthorized", "Unauthorized")
    connector = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
    async with aiohttp.ClientSession(connector=connector) as session, session.delete(
        "http://localhost/api/v1/namespaces/default/services/web"
    ) as response:
        assert response.status == 200  # the Unix socket is the admin's
    assert (refusals(server).forbidden_count, refusals(server).unauthorized_count) == (1, 1)


ROLES = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
     "metadata": {"name": "reader", "namespace": "shop"},
     "rules": [{"apiGroups": [""], "resources": ["services", "services/status"],
                "verbs": ["get"]},
               {"apiGroups": ["*"], "resources": ["*"], "resourceNames": ["cart"],
                "verbs": ["update"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": "reader", "namespace": "shop"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
     "subjects": [{"kind": "User", "name": "ann"}, {"kind": "Group", "name": "ops"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "metrics"}, "rules": [{"nonResourceURLs": ["/metrics*"],
                                                 "verbs": ["get"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "metrics"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "metrics"},
     "subjects": [{"kind": "ServiceAccount", "name": "prom", "namespace": "mon"}]},
]
ANN = UserInfo.authenticated("ann")
BOB_OPS = UserInfo.authenticated("bob", "ops")
PROM = UserInfo.authenticated("system:serviceaccount:mon:prom")


@pytest.mark.parametrize(
    ("user", "request_", "allowed"),
    [
        (ANN, ResourceRequest("get", "", "services", "shop", "web"), True),
        (ANN, ResourceRequest("get", "", "services", "other", "web"), False),  # not its namespace
        (ANN, ResourceRequest("list", "", "services", "shop"), False),
        (ANN, ResourceRequest("get", "", "services", "shop", "web", "status"), True),
        (ANN, ResourceRequest("get", "", "nodes", "", "n1"), False),
        (BOB_OPS, ResourceRequest("get", "", "services", "shop", "web"), True),  # by group
        (BOB_OPS, ResourceRequest("update", "apps", "deployments", "shop", "cart"), True),
        (BOB_OPS, ResourceRequest("update", "apps", "deployments", "shop", "till"), False),
        (PROM, PathRequest("get", "/metrics/cadvisor"), True),
        (PROM, PathRequest("post", "/metrics"), False),
        (ANN, PathRequest("get", "/metrics"), False),
        (ANN, PathRequest("get", "/apis/discovery.k8s.io"), True),  # built-in discovery
        (ANONYMOUS, PathRequest("get", "/apis"), False),
        (ANONYMOUS, PathRequest("get", "/healthz"), True),
        (UserInfo("root", ("system:masters",)), ResourceRequest("delete", "", "nodes", "",
                                                                  "n1"), True),
    ],
)
def test_policy_decisions(user: UserInfo, request_: ResourceRequest | PathRequest,
                          allowed: bool) -> None:
    assert Policy.from_documents(ROLES).allows(user, request_) is allowed


def test_bad_rbac_documents_name_object_and_field() -> None:
    broken = [dict(ROLES[1], subjects=[{"kind": "Robot", "name": "x"}])]
    with pytest.raises(RbacError, match=r"RoleBinding reader: subjects\[0\]\.kind"):
        Policy.from_documents(broken)
    with pytest.raises(RbacError, match=r"ClusterRole metrics: rules\[0\]\.verbs"):
        Policy.from_documents([dict(ROLES[2], rules=[{"nonResourceURLs": ["/x"]}])])
    assert len(read_manifests(RBAC)) == 3
