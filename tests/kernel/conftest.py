"""Fixtures for kernel tests: labs of network namespaces that are always torn down."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator

import pytest

from kproxy.devcluster.lab import Lab, Pod
from kproxy.devcluster.netns import cleanup_stale


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Two nodes (172.18.0.11, .12; pods 10.244.1.0/24, 10.244.2.0/24) and an outside client."""
    with Lab(nodes=2, outside=True) as built:
        yield built


@pytest.fixture
def dual_stack_lab() -> Iterator[Lab]:
    """Like ``lab``, with IPv6 addresses and routes as well."""
    with Lab(nodes=2, outside=True, ipv6=True) as built:
        yield built


@pytest.fixture
def lab_pods(lab: Lab) -> list[Pod]:
    """web-1-1, web-1-2 on node1 and web-2-1, web-2-2 on node2, serving TCP and UDP 8080."""
    pods = [lab.add_pod(node, f"web-{node.index}-{k}") for node in lab.nodes for k in (1, 2)]
    lab.start_servers(pods)
    return pods


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    """Safety net: whatever this test process left behind goes at the end of the session."""
    yield
    if os.geteuid() == 0 and shutil.which("ip") is not None:
        leftovers = cleanup_stale()
        if leftovers:
            warnings.warn(f"deleted leftover lab namespaces: {leftovers}", stacklevel=1)
