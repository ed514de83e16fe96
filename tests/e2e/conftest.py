"""Fixtures of the end-to-end suite: one dev cluster with kproxy per module and proxy mode,
and a :class:`Case` per test that leaves the cluster clean.

The dev API server enforces deploy/rbac.yaml: kproxy on the nodes talks to it as its
ServiceAccount, and every case checks that not one of its requests was refused, so the role
shipped in deploy/ is proven to be enough for everything the suite makes kproxy do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_cluster import NO_ICMP_RATE_LIMIT, Case, E2eCluster, start_kproxy

from kproxy.devcluster.cluster import PROXY_MODES, DevCluster

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


@pytest.fixture(scope="module", params=PROXY_MODES)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[E2eCluster]:
    mode: str = request.param
    workdir = tmp_path_factory.mktemp(f"e2e-{mode}")
    with DevCluster(workdir, rbac=RBAC) as dev:
        for node in dev.nodes:
            node.ns.sysctls(NO_ICMP_RATE_LIMIT)
            dev.lab.add_pod(node, f"client-{node.index}")
        kproxies = start_kproxy(dev, mode, workdir)
        try:
            yield E2eCluster(mode, dev, kproxies)
        finally:
            for kproxy in kproxies:
                if kproxy.proc is not None:
                    kproxy.stop()


@pytest.fixture
def case(cluster: E2eCluster) -> Iterator[Case]:
    created = Case(cluster)
    try:
        yield created
    finally:
        created.close()
        for kproxy in cluster.kproxies:
            kproxy.assert_running()
        refused = cluster.api.refusals()
        assert (refused["forbidden"], refused["unauthorized"]) == (0, 0), refused
