"""``kproxy run`` as a process in a namespace of its own: its health and metrics servers
answer, and SIGTERM / SIGINT end it with status 0 leaving the iptables rules in place (so
traffic keeps flowing while a DaemonSet pod is replaced)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kproxy_nodes import eventually

from kproxy.devcluster.netns import NetNamespace

pytestmark = pytest.mark.kernel

OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
---
apiVersion: v1
kind: Node
metadata: {name: node1}
spec:
  taints: [{key: ToBeDeletedByClusterAutoscaler, value: "1700000000", effect: NoSchedule}]
"""
HEALTHZ = "127.0.0.1:10256"
METRICS = "127.0.0.1:10249"
# Bounds on waiting for the process; never a performance expectation.
LIMIT = 30.0
FETCH = """\
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        print(response.status); print(response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code); print(error.read().decode())
except OSError as error:
    print(0); print(error)
"""


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    with NetNamespace("signals") as created:
        yield created


def fetch(namespace: NetNamespace, url: str) -> tuple[int, str]:
    done = namespace.run([sys.executable, "-c", FETCH, url])
    status, _, body = done.stdout.partition("\n")
    return int(status), body


def nat_rules(namespace: NetNamespace) -> str:
    return namespace.run(["iptables-save", "-t", "nat"]).stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_cleanly_and_keeps_the_rules(
    namespace: NetNamespace, tmp_path: Path, signum: signal.Signals
) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    log_path = tmp_path / "kproxy.log"
    with log_path.open("wb") as log:
        proc = namespace.popen_python(
            "kproxy.cli", "run", "--from-file", str(objects), "--hostname-override", "node1",
            "--healthz-bind-address", HEALTHZ, "--metrics-bind-address", METRICS, "--v=2",
            stdout=subprocess.DEVNULL, stderr=log,
        )

    def started() -> list[str]:
        if proc.poll() is not None:
            return [f"kproxy exited with {proc.returncode}: {log_path.read_text()}"]
        status, body = fetch(namespace, f"http://{HEALTHZ}/livez")
        if status != 200:
            return [f"/livez: {status} {body}"]
        if "10.96.0.10/32" not in nat_rules(namespace):
            return ["the service's rule is not in the nat table yet"]
        return []

    eventually(started, "kproxy serving and synced", LIMIT)
    # The Node carries the autoscaler's deletion taint: not ready, but alive.
    status, body = fetch(namespace, f"http://{HEALTHZ}/healthz")
    assert status == 503, body
    assert json.loads(body)["nodeEligible"] is False
    status, mode = fetch(namespace, f"http://{METRICS}/proxyMode")
    assert (status, mode.strip()) == (200, "iptables")
    status, metrics = fetch(namespace, f"http://{METRICS}/metrics")
    assert status == 200
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1.0" in metrics
    assert 'kubeproxy_proxy_healthz_total{code="503"} 1.0' in metrics
    rules_before = nat_rules(namespace)

    os.killpg(proc.pid, signum)
    try:
        code = proc.wait(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        namespace.stop(proc)
        raise AssertionError(f"kproxy ignored {signum.name}: {log_path.read_text()}") from None
    namespace.stop(proc)
    assert code == 0, log_path.read_text()
    rules_after = nat_rules(namespace)
    assert "10.96.0.10/32" in rules_after
    assert _chains(rules_after) == _chains(rules_before)
    # Both servers are gone with the process.
    assert fetch(namespace, f"http://{HEALTHZ}/livez")[0] == 0


def _chains(save: str) -> list[str]:
    return sorted(line.split()[0] for line in save.splitlines() if line.startswith(":KPROXY"))


RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
API = "127.0.0.1:6443"


def test_kproxy_run_within_its_role_then_sigterm(namespace: NetNamespace, tmp_path: Path) -> None:
    """``kproxy run`` against a dev API server enforcing deploy/rbac.yaml as kproxy's
    ServiceAccount: it programs the service, and the server refused none of its requests."""
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS.replace("  taints: [{key: ToBeDeletedByClusterAutoscaler, "
                                       'value: "1700000000", effect: NoSchedule}]\n', ""))
    kubeconfig = tmp_path / "kubeconfig"
    log_path = tmp_path / "kproxy.log"
    with log_path.open("wb") as log:
        api = namespace.popen_python(
            "kproxy.cli", "devapi", "--listen", API, "--rbac", str(RBAC),
            "--user", "system:serviceaccount:kube-system:kproxy",
            "--load", str(objects), "--write-kubeconfig", str(kubeconfig),
            stdout=subprocess.DEVNULL, stderr=log,
        )
        eventually(lambda: [] if kubeconfig.exists() else ["no kubeconfig yet"],
                   "the dev API server", LIMIT)
        proc = namespace.popen_python(
            "kproxy.cli", "run", "--kubeconfig", str(kubeconfig), "--hostname-override",
            "node1", "--healthz-bind-address", HEALTHZ, "--metrics-bind-address", METRICS,
            stdout=subprocess.DEVNULL, stderr=log,
        )

    def synced() -> list[str]:
        if proc.poll() is not None or api.poll() is not None:
            return [f"a process exited: {log_path.read_text()}"]
        status, body = fetch(namespace, f"http://{HEALTHZ}/healthz")
        if status != 200 or "10.96.0.10/32" not in nat_rules(namespace):
            return [f"not synced yet: /healthz {status} {body}"]
        return []

    eventually(synced, "kproxy synced through the API", LIMIT)
    status, body = fetch(namespace, f"http://{API}/kproxy/refusals")
    assert status == 200
    assert json.loads(body) == {"forbidden": 0, "unauthorized": 0, "refusals": []}
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=LIMIT) == 0, log_path.read_text()
    namespace.stop(proc)
    namespace.stop(api)
    assert "10.96.0.10/32" in nat_rules(namespace)
