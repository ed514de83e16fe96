"""``kproxy demo`` (what ``make demo`` runs) works end to end and cleans up after itself."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from kproxy.devcluster.netns import NAMESPACE_PREFIX, list_namespaces

pytestmark = pytest.mark.kernel

DEMO_LIMIT = 180  # bounds a hang; the demo itself says how long it took


def run_demo(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The demo's outcome, and the namespaces of its process still there afterwards (the
    machine may be shared: other processes' namespaces come and go meanwhile)."""
    with subprocess.Popen([sys.executable, "-m", "kproxy.cli", "demo", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out, err = proc.communicate(timeout=DEMO_LIMIT)
    prefix = f"{NAMESPACE_PREFIX}{proc.pid}-"
    left = [name for name in list_namespaces() if name.startswith(prefix)]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), left


def test_demo_passes_in_both_modes_and_leaves_no_namespaces() -> None:
    done, left = run_demo()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "demo passed" in out
    assert out.index("=== iptables mode ===") < out.index("=== userspace mode ===")
    # Every pod answered through the ClusterIP, and the NodePort answered on both nodes.
    spread = re.search(r"30 requests from client on node1 .*: (.*); 0 failed", out)
    assert spread and all(f"web-v1-{k} " in spread.group(1) for k in (1, 2, 3)), out
    assert len(re.findall(r"10 requests to 172\.18\.0\.1[12]:\d+: .*; 0 failed", out)) >= 2
    assert "failed requests: 0" in out
    assert re.search(r"node1: 1 KPROXY-EXT, 3 KPROXY-SEP, 1 KPROXY-SVC", out), out
    assert out.count("failed requests: 0") == 2, out
    assert not left


def test_ctrl_c_tears_everything_down() -> None:
    with subprocess.Popen([sys.executable, "-m", "kproxy.cli", "demo"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until the cluster is up with kproxy running on it
            seen.append(line)
            if line.startswith("2. kproxy run"):
                break
        assert seen and seen[-1].startswith("2. kproxy run"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=DEMO_LIMIT)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted: everything was torn down" in rest
    assert not [name for name in list_namespaces()
                if name.startswith(f"{NAMESPACE_PREFIX}{proc.pid}-")]
