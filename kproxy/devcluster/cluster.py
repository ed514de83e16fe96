"""The dev cluster: the lab (VXLAN overlay, control plane, outside client), the API server in
the control-plane namespace with every node registered, how ``kproxy run`` is started on a
node, and a view of what kproxy's tracker sees there. Shared by the tests and ``kproxy demo``."""

from __future__ import annotations

import json
import queue
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kproxy.devcluster.blockingclient import BlockingApiClient
from kproxy.devcluster.client import ApiObject
from kproxy.devcluster.lab import OVERLAY_VXLAN, Lab, LabHost, Node
from kproxy.devcluster.netns import Popen

API_PORT = 6443
CLUSTER_CIDR = "10.244.0.0/16"  # every node's pod CIDR is inside it
ZONE_LABEL = "topology.kubernetes.io/zone"
PROXY_MODES = ("iptables", "userspace")
START_LIMIT = 20.0  # bounds a hang; never a performance expectation
STOP_GRACE = 15.0

TrackerState = dict[str, Any]


class DevApiProcess:
    """``kproxy devapi`` inside a lab namespace, restartable with its state file.

    It listens on the host's lab address (for nodes) and on a Unix socket in ``workdir`` (for
    a driver in another namespace); it writes a kubeconfig there for the nodes.
    """

    def __init__(self, host: LabHost, workdir: Path, *, bookmark_interval: float = 1.0,
                 rbac: Path | None = None, validate: bool = True) -> None:
        self.host = host
        self.validate = validate  # False: ``--no-validation``
        # With RBAC files, TCP clients (the nodes' kproxy) are kproxy's ServiceAccount, held to
        # those roles; the Unix socket (the driver) stays the admin's. The token is kept
        # across restarts, as a ServiceAccount's is: the nodes' kubeconfig stays valid.
        self.rbac = rbac
        self._token = secrets.token_hex(16)
        self.socket = workdir / "api.sock"
        self.kubeconfig = workdir / "kubeconfig"
        self.state_file = workdir / "state.json"
        self.bookmark_interval = bookmark_interval
        self.proc: Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{API_PORT}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.proc = self.host.ns.popen_python(
            "kproxy.cli", "devapi",
            "--listen", f"{self.host.ip}:{API_PORT}",
            "--listen-unix", str(self.socket),
            "--state-file", str(self.state_file),
            "--write-kubeconfig", str(self.kubeconfig),
            "--bookmark-interval", str(self.bookmark_interval),
            *(("--rbac", str(self.rbac), "--token", self._token)
              if self.rbac is not None else ()),
            *(() if self.validate else ("--no-validation",)),
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_LIMIT
        # The socket file appears when it is bound, a moment before the server accepts:
        # ready means a connection is taken (and the kubeconfig is written).
        while not (self.kubeconfig.exists() and _accepts(self.socket)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"devapi exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("devapi did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM and wait: the server saves its state file on the way out (a SIGKILL after
        a short grace on a loaded machine would lose the last changes)."""
        if self.proc is not None:
            self.host.ns.stop(self.proc, grace=STOP_GRACE)
            self.proc = None

    def send_signal(self, signum: int) -> None:
        if self.proc is None:
            raise RuntimeError("devapi is not running")
        self.proc.send_signal(signum)


class TrackerView:
    """Runs ``kproxy.devcluster.watchstate`` (real informers + tracker) in a node namespace
    and follows the JSON lines it prints."""

    def __init__(self, node: LabHost, kubeconfig: Path, proxy_name: str = "") -> None:
        self.node = node
        self.latest: TrackerState = {}
        self._lines: queue.Queue[TrackerState] = queue.Queue()
        self.proc = node.ns.popen_python(
            "kproxy.devcluster.watchstate", "--kubeconfig", str(kubeconfig),
            "--node", node.name, "--service-proxy-name", proxy_name,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for raw in stream:
            self._lines.put(json.loads(raw))

    def wait_for(
        self, condition: Callable[[TrackerState], bool], what: str, limit: float = START_LIMIT
    ) -> TrackerState:
        deadline = time.monotonic() + limit
        while not condition(self.latest):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.node.name}: tracker never showed {what}; last: {self.latest}"
                )
            try:
                self.latest = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
        return self.latest

    def stop(self) -> None:
        self.node.ns.stop(self.proc)


def endpoints_of(state: TrackerState, port_name: str) -> list[str]:
    return list(state.get("endpoints", {}).get(port_name, []))


# --- modes -----------------------------------------------------------------------------------


def kproxy_run_args(mode: str, kubeconfig: Path, node: LabHost, *,
                    min_sync_period: str = "1s", sync_period: str = "30s",
                    verbosity: int = 2) -> list[str]:
    """``kproxy run`` arguments for ``node`` of the dev cluster in ``mode``."""
    return [
        f"--proxy-mode={mode}", f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node.name}", f"--cluster-cidr={CLUSTER_CIDR}",
        f"--iptables-min-sync-period={min_sync_period}",
        f"--iptables-sync-period={sync_period}", f"--v={verbosity}",
        # The default 127.0.0.1:10249 would do; nothing in the lab reads metrics.
        "--metrics-bind-address=",
    ]


# --- the cluster -----------------------------------------------------------------------------


def zone_of(node: Node) -> str:
    """Nodes alternate between two zones: zone-a (node1, node3, ...) and zone-b."""
    return f"zone-{'ab'[(node.index - 1) % 2]}"


def node_object(node: Node) -> ApiObject:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {
            ZONE_LABEL: zone_of(node), "kubernetes.io/hostname": node.name}},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    }


def node_status(node: Node) -> ApiObject:
    return {"status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                     {"type": "Hostname", "address": node.name}]}}


class DevCluster:
    """A lab with ``nodes`` nodes, a control plane running the dev API server (its Node
    objects registered) and an outside client; ``api`` drives it as a controller would.

    kproxy is not started here: callers run it on the nodes with :func:`kproxy_run_args`.
    Everything is deleted on exit, also on exceptions and Ctrl-C.
    """

    def __init__(self, workdir: Path, *, nodes: int = 2, overlay: str = OVERLAY_VXLAN,
                 rbac: Path | None = None) -> None:
        self.workdir = workdir
        self.rbac = rbac
        self.lab = Lab(nodes=nodes, outside=True, control_plane=True, overlay=overlay)
        self._devapi: DevApiProcess | None = None
        self._api: BlockingApiClient | None = None

    def __enter__(self) -> DevCluster:
        try:
            self.lab.build()
            assert self.lab.control_plane is not None
            self._devapi = DevApiProcess(self.lab.control_plane, self.workdir, rbac=self.rbac)
            self._devapi.start()
            self._api = BlockingApiClient(unix_path=str(self._devapi.socket))
            for node in self.lab.nodes:
                self._api.apply(node_object(node))
                self._api.merge_patch("v1", "Node", node.name, node_status(node), None,
                                      status=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def devapi(self) -> DevApiProcess:
        if self._devapi is None:
            raise RuntimeError("the dev cluster is not running")
        return self._devapi

    @property
    def api(self) -> BlockingApiClient:
        if self._api is None:
            raise RuntimeError("the dev cluster is not running")
        return self._api

    @property
    def nodes(self) -> list[Node]:
        return self.lab.nodes

    @property
    def zones(self) -> dict[str, str]:
        return {node.name: zone_of(node) for node in self.lab.nodes}

    def restart_api_server(self) -> None:
        """Stop the API server (it saves its state) and start it again from that state."""
        self.devapi.stop()
        self.devapi.start()

    def close(self) -> None:
        try:
            if self._api is not None:
                self._api.close()
                self._api = None
            if self._devapi is not None:
                self._devapi.stop()
                self._devapi = None
        finally:
            self.lab.close()


def _accepts(path: Path) -> bool:
    """Whether a Unix socket at ``path`` takes a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
