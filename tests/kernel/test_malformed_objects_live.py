"""Malformed objects through the live path: the dev API server stores them unvalidated
(``--no-validation``), kproxy's informers receive them, and a valid Service keeps answering.

kproxy runs on node1 of a lab, in iptables mode and then in userspace mode; a client pod
sends requests to one valid Service throughout, while a few thousand malformed Services and
EndpointSlices
(:mod:`kproxy.devcluster.malformed`) are written through the API. Every request must be
answered by the Service's endpoint, kproxy must still run, its rejection metric must have
counted the objects, and the valid Service's rules must be unchanged afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from kproxy_nodes import KproxyOnNode, eventually
from test_iptables_dynamic import (
    WEB_PORT,
    Api,
    Prober,
    endpoint_slice,
    service,
)
from test_userspace_dynamic import kproxy_args

from kproxy.devcluster.cluster import DevApiProcess, node_object, node_status
from kproxy.devcluster.lab import Lab
from kproxy.devcluster.malformed import malformed_objects

pytestmark = pytest.mark.kernel

MALFORMED_COUNT = 2000
METRICS = "127.0.0.1:10249"
CHANGE_LIMIT = 15.0  # bounds kproxy reacting; never a performance expectation
URLS = {"Service": "/api/v1/namespaces/default/services",
        "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"}
_COUNTERS = re.compile(r"\[\d+:\d+\]")


async def write_all(socket_path: Path, count: int) -> list[str]:
    """POST every malformed object over the Unix socket; the refusals (should be none)."""
    refused: list[str] = []
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector, base_url="http://devapi") as session:
        for obj in malformed_objects(count, seed=11, service_names=("steady",)):
            async with session.post(URLS[obj["kind"]], data=json.dumps(obj),
                                    headers={"Content-Type": "application/json"}) as answer:
                if answer.status != 201:
                    refused.append(f"{answer.status}: {(await answer.text())[:200]}")
    return refused


def steady_rules(lab: Lab) -> list[str]:
    """node1's rules that mention default/steady, without counters."""
    saved = lab.nodes[0].ns.run(["iptables-nft-save", "-t", "nat"]).stdout
    return sorted(_COUNTERS.sub("", line) for line in saved.splitlines()
                  if '"default/steady' in line)


def rejected_total(lab: Lab) -> float:
    code = ("import urllib.request; print(urllib.request.urlopen("
            f"'http://{METRICS}/metrics', timeout=5).read().decode())")
    text = lab.nodes[0].ns.run([sys.executable, "-c", code]).stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kproxy_rejected_objects") and not line.startswith("#")
               and "_created" not in line.split("{")[0])


@pytest.fixture(scope="module", params=["iptables", "userspace"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Lab, Api, DevApiProcess, KproxyOnNode]]:
    mode: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"malformed-live-{mode}")
    with Lab(nodes=1, outside=False, control_plane=True) as lab:
        assert lab.control_plane is not None
        devapi = DevApiProcess(lab.control_plane, workdir, validate=False)
        devapi.start()
        api = Api(devapi.socket)
        node = lab.nodes[0]
        lab.add_pod(node, "web-1")
        lab.add_pod(node, "client-1")
        api.apply(node_object(node))
        api.patch_status("Node", node.name, node_status(node))
        lab.start_servers([lab.pod("web-1")], tcp=(WEB_PORT,), udp=(WEB_PORT,))
        kproxy = KproxyOnNode(node, [*kproxy_args(devapi, node, mode),
                                     f"--metrics-bind-address={METRICS}"],
                              workdir / "kproxy-node1.log")
        try:
            kproxy.start()
            kproxy.wait_synced()
            yield lab, api, devapi, kproxy
        finally:
            if kproxy.proc is not None:
                kproxy.stop()
            devapi.stop()


def test_malformed_objects_through_the_informers_leave_a_valid_service_answering(
    live: tuple[Lab, Api, DevApiProcess, KproxyOnNode],
) -> None:
    lab, api, devapi, kproxy = live
    address = api.create_service(service("steady"))
    api.apply(endpoint_slice(lab, "steady", ["web-1"]))
    client = lab.pod("client-1")
    eventually(lambda: [f"{r.error}" for r in client.probe("tcp", address, 80, count=2,
                                                           timeout=0.7) if not r.ok],
               "the valid service answers", CHANGE_LIMIT)
    rules_before = steady_rules(lab)
    assert rules_before
    rejected_before = rejected_total(lab)

    prober = Prober(client, address)
    try:
        prober.wait_rounds(1)
        refused = asyncio.run(write_all(devapi.socket, MALFORMED_COUNT))
        prober.wait_rounds(2)
    finally:
        results = prober.stop()
    assert not refused, refused[:5]
    failures = [f"{r.error} ({r.detail})" for r in results if not r.ok]
    assert not failures, (f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
                          f"\n{kproxy.tail()}")
    assert {r.pod for r in results} == {"web-1"}
    kproxy.assert_running()

    # Every malformed object was seen and rejected (counted once at least).
    eventually(lambda: [] if rejected_total(lab) - rejected_before >= MALFORMED_COUNT
               else [f"{rejected_total(lab) - rejected_before:g} rejections counted"],
               "the rejections counted", CHANGE_LIMIT)
    kproxy.wait_for_log(r"skipped object|ignored field")
    assert steady_rules(lab) == rules_before
    kproxy.assert_running()
