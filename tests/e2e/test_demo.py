"""``kproxy demo`` (what ``make demo`` runs) works end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kproxy.devcluster.netns import list_namespaces

pytestmark = pytest.mark.kernel


def test_demo_passes_and_leaves_no_namespaces() -> None:
    before = set(list_namespaces())
    done = subprocess.run(
        [sys.executable, "-m", "kproxy.cli", "demo"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo passed" in done.stdout
    # Both nodes saw the service with all three pods, then the scale-down to two.
    assert done.stdout.count("-> 10.244.1.2:8080, 10.244.1.3:8080, 10.244.2.2:8080") >= 2
    assert "service relists per node" in done.stdout
    assert set(list_namespaces()) == before
