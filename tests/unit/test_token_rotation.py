"""Bound ServiceAccount token rotation: the dev API server expires and rotates kproxy's token
as the kubelet does, and kproxy's real transport and informers, under deploy/rbac.yaml, stay
connected across rotations by re-reading the token file (periodically, and after a 401, with
the refused request sent once more).

The server's token expiry runs on a clock the test moves, so a rotation and the expiry of
the previous token happen exactly when the test says; the client re-reads on its own schedule
(``token_reread_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kproxy.clock import SystemClock
from kproxy.devcluster.apiserver import DevApiServer
from kproxy.devcluster.apiserver.access import AccessControl
from kproxy.devcluster.apiserver.manifests import read_manifests
from kproxy.devcluster.apiserver.rbac import Policy
from kproxy.devcluster.apiserver.tokenrotation import REFRESH_FRACTION, TokenRotator
from kproxy.kube.tokenfile import TokenFile, kubeconfig_token_file
from kproxy.kube.transport import ApiError, KubeTransport
from kproxy.rejections import RejectionLog
from kproxy.sources import ApiSource
from kproxy.state import StateTracker

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
KPROXY = "system:serviceaccount:kube-system:kproxy"
NODE = "node-a"
TTL = 60.0


class ServerTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


class Cluster:
    def __init__(self, server: DevApiServer, access: AccessControl, rotator: TokenRotator,
                 time: ServerTime, kubeconfig: Path) -> None:
        self.server, self.access, self.rotator = server, access, rotator
        self.time, self.kubeconfig = time, kubeconfig

    def rotate_and_expire(self) -> None:
        """As the kubelet: a new token in the file at 80 % of the current one's lifetime,
        then the current one's expiry. Only the new one is accepted from now on."""
        self.time.now += TTL * REFRESH_FRACTION
        self.rotator.rotate()
        self.time.now += TTL * (1 - REFRESH_FRACTION)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    time = ServerTime()
    access = AccessControl(Policy.from_documents(read_manifests(str(RBAC))), clock=time)
    rotator = TokenRotator(access, KPROXY, tmp_path / "token", ttl=TTL)
    rotator.rotate()
    server = DevApiServer(bookmark_interval=0.05, access=access)
    await server.start(unix_path=str(tmp_path / "api.sock"))
    server.load_objects([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                         service("before")])
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig",
                                         token_file=str(tmp_path / "token"))
    try:
        yield Cluster(server, access, rotator, time, kubeconfig)
    finally:
        await server.stop()


def has_service(tracker: StateTracker, name: str) -> bool:
    return any(port.namespace == "default" and port.name == name
               for port in tracker.snapshot().services)


async def until(changed: asyncio.Event, condition: Any) -> None:
    """Wait (at most 20 s) for ``condition``, checked after every change of the tracker."""
    async with asyncio.timeout(20):
        while not condition():
            changed.clear()
            await changed.wait()


@pytest.mark.parametrize(
    "reread_interval", [0.0, 3600.0], ids=["rereads-in-time", "rereads-only-after-401"]
)
async def test_kproxy_stays_connected_across_two_rotations(
    cluster: Cluster, reread_interval: float
) -> None:
    transport = await KubeTransport.connect(
        str(cluster.kubeconfig), token_reread_interval=reread_interval
    )
    changed = asyncio.Event()
    tracker = StateTracker(on_change=changed.set)
    source = ApiSource(transport, tracker, RejectionLog(), node_name=NODE, proxy_name="",
                       clock=SystemClock())
    running = asyncio.create_task(source.run())
    try:
        await until(changed, lambda: tracker.ready and tracker.node is not None)
        for rotation in (1, 2):
            cluster.rotate_and_expire()
            # Every informer relists and watches again: new requests, after the expiry.
            cluster.server.expire_watches()
            cluster.server.load_objects([service(f"after-rotation-{rotation}")])
            await until(changed,
                        lambda r=rotation: has_service(tracker, f"after-rotation-{r}"))
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await transport.close()
    assert has_service(tracker, "before")
    refusals = cluster.access.refusals
    # Nothing outside the role, and no token the server never issued.
    assert cluster.access.forbidden_count == 0
    assert {refusal.user for refusal in refusals} <= {"(expired token)"}
    # Every request refused for a stale token was sent again with the fresh one, and none
    # was refused twice: the refusal count is the retry count. Re-reading before each
    # request, only a request already under way at the rotation can be refused; re-reading
    # only after a 401, at least the first request after each rotation is.
    assert cluster.access.unauthorized_count == transport.unauthorized_retries
    if reread_interval > 0:
        assert transport.unauthorized_retries >= 2


async def test_a_401_is_retried_once_with_the_token_the_file_holds_now(
    cluster: Cluster,
) -> None:
    transport = await KubeTransport.connect(str(cluster.kubeconfig), token_reread_interval=3600)
    try:
        first = await transport.get_json("/api/v1/nodes", [], 10)
        assert [n["metadata"]["name"] for n in first["items"]] == [NODE]
        assert transport.token_file is not None
        reads = transport.token_file.reads
        cluster.rotate_and_expire()
        again = await transport.get_json("/api/v1/nodes", [], 10)
        assert [n["metadata"]["name"] for n in again["items"]] == [NODE]
        assert transport.unauthorized_retries == 1
        assert transport.token_file.reads == reads + 1
        assert [r.code for r in cluster.access.refusals] == [401]
        # The next request carries the new token from the start.
        await transport.get_json("/api/v1/nodes", [], 10)
        assert transport.unauthorized_retries == 1
        assert len(cluster.access.refusals) == 1
    finally:
        await transport.close()


async def test_a_401_with_no_newer_token_is_an_error_without_retry(cluster: Cluster) -> None:
    transport = await KubeTransport.connect(str(cluster.kubeconfig), token_reread_interval=3600)
    try:
        cluster.time.now += TTL  # expired, and the file was not rewritten
        with pytest.raises(ApiError) as refused:
            await transport.get_json("/api/v1/nodes", [], 10)
        assert refused.value.status == 401
        assert transport.unauthorized_retries == 0
        assert [r.user for r in cluster.access.refusals] == ["(expired token)"]
    finally:
        await transport.close()


async def test_the_token_is_reread_when_the_interval_has_passed(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "token"
    path.write_text("first\n")
    token = TokenFile(str(path), reread_interval=60.0, clock=lambda: now[0])
    path.write_text("second")
    now[0] = 59.0
    assert token.current() == "first"
    now[0] = 60.0
    assert token.current() == "second"
    path.unlink()  # a passing fault keeps the last token
    assert token.reread() is False
    assert token.current() == "second"


def test_the_token_file_of_a_kubeconfig_user(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: x, user: u}},"
        " {name: d, context: {cluster: x, user: v}}]\n"
        "users: [{name: v, user: {tokenFile: /elsewhere}}, {name: u, user: {tokenFile: tok}}]\n"
    )
    assert kubeconfig_token_file(str(config)) == str(tmp_path / "tok")
    config.write_text(config.read_text().replace("{tokenFile: tok}", "{token: t, tokenFile: tok}"))
    assert kubeconfig_token_file(str(config)) is None  # an inline token wins, as in client-go
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "configmap.yaml"
    kubeconfig_text = next(
        d["data"]["kubeconfig.conf"] for d in read_manifests(str(deploy))
        if d.get("kind") == "ConfigMap"
    )
    config.write_text(kubeconfig_text)
    assert kubeconfig_token_file(str(config)) == (
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )
