"""Processes of the dev cluster: the API server in the control-plane namespace, and a view of
what kproxy's tracker sees on a node. Shared by the kernel tests and ``kproxy demo``."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kproxy.devcluster.lab import LabHost
from kproxy.devcluster.netns import Popen

API_PORT = 6443
START_LIMIT = 20.0  # bounds a hang; never a performance expectation
STOP_GRACE = 15.0

TrackerState = dict[str, Any]


class DevApiProcess:
    """``kproxy devapi`` inside a lab namespace, restartable with its state file.

    It listens on the host's lab address (for nodes) and on a Unix socket in ``workdir`` (for
    a driver in another namespace); it writes a kubeconfig there for the nodes.
    """

    def __init__(self, host: LabHost, workdir: Path, *, bookmark_interval: float = 1.0) -> None:
        self.host = host
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
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_LIMIT
        while not (self.socket.exists() and self.kubeconfig.exists()):
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
