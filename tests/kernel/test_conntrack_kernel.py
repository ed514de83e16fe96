"""A stale UDP conntrack entry keeps a client on an old endpoint until the cleaner runs.

Two namespaces on a veth pair: the client, where the test writes a DNAT rule mapping a fake
service IP to endpoint A, and the server, running one pod server on A's address and one on
B's. The client always sends from the same source port, so every datagram belongs to one
conntrack flow.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from kproxy.conntrack import ConntrackCleaner
from kproxy.devcluster.netns import NetNamespace, wait_for_line
from kproxy.devcluster.probe import run_probe
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import Snapshot

pytestmark = pytest.mark.kernel

SERVICE_PORT = 53
ENDPOINT_PORT = 8053
CLIENT_PORT = 40555
OTHER_CLIENT_PORT = 40556
READY_TIMEOUT = 15.0


@dataclass(frozen=True)
class Addressing:
    family: IPFamily
    prefix_length: int
    client: str
    endpoint_a: str
    endpoint_b: str
    service_ip: str

    @property
    def iptables(self) -> str:
        return "ip6tables" if self.family is IPFamily.IPV6 else "iptables"

    def target(self, endpoint_ip: str) -> str:
        host = f"[{endpoint_ip}]" if self.family is IPFamily.IPV6 else endpoint_ip
        return f"{host}:{ENDPOINT_PORT}"


IPV4 = Addressing(IPFamily.IPV4, 24, "10.77.0.1", "10.77.0.2", "10.77.0.3", "10.96.7.7")
IPV6 = Addressing(IPFamily.IPV6, 64, "fd77::1", "fd77::2", "fd77::3", "fd96::7")


@dataclass
class Pair:
    addressing: Addressing
    client: NetNamespace
    server: NetNamespace

    def dnat_to(self, endpoint_ip: str, *, replace: bool) -> None:
        a = self.addressing
        action = ["-R", "OUTPUT", "1"] if replace else ["-A", "OUTPUT"]
        self.client.run([a.iptables, "-t", "nat", *action, "-d", a.service_ip, "-p", "udp",
                         "--dport", str(SERVICE_PORT), "-j", "DNAT",
                         "--to-destination", a.target(endpoint_ip)])

    def pod_answering(self, host: str, port: int, source_port: int) -> str | None:
        [result] = run_probe(self.client, "udp", host, port, source_port=source_port)
        assert result.ok, result
        return result.pod

    def flows(self) -> str:
        family = "ipv6" if self.addressing.family is IPFamily.IPV6 else "ipv4"
        return self.client.run(["conntrack", "-L", "-p", "udp", "-f", family]).stdout


@pytest.fixture(params=[IPV4, IPV6], ids=["ipv4", "ipv6"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    a: Addressing = request.param
    nodad = ["nodad"] if a.family is IPFamily.IPV6 else []
    with NetNamespace("ctclient") as client, NetNamespace("ctserver") as server:
        for ns in (client, server):
            # Link-local addresses would stay tentative for a while and delay neighbour
            # discovery; set before the links exist so that they inherit it.
            ns.sysctls({"net.ipv6.conf.all.accept_dad": 0,
                        "net.ipv6.conf.default.accept_dad": 0})
        client.add_veth("c0", server, "s0")
        # Links up before addresses: with DAD off their link-local addresses are usable at
        # once, and the first datagram is not lost to neighbour discovery.
        client.ip("link", "set", "c0", "up")
        server.ip("link", "set", "s0", "up")
        client.ip("addr", "add", f"{a.client}/{a.prefix_length}", "dev", "c0", *nodad)
        # The fake service IP must be routable for the packet to reach the nat table.
        family_flag = "-6" if a.family is IPFamily.IPV6 else "-4"
        client.ip(family_flag, "route", "add", "default", "dev", "c0")
        for ip in (a.endpoint_a, a.endpoint_b):
            server.ip("addr", "add", f"{ip}/{a.prefix_length}", "dev", "s0", *nodad)
        for name, ip in (("A", a.endpoint_a), ("B", a.endpoint_b)):
            proc = server.popen_python("kproxy.devcluster.podserver", "--name", name,
                                       "--udp", str(ENDPOINT_PORT), "--bind", ip,
                                       stdout=subprocess.PIPE)
            wait_for_line(proc, "READY", READY_TIMEOUT)
        yield Pair(a, client, server)


def only_endpoint(a: Addressing, *endpoint_ips: str) -> Snapshot:
    service = ServicePort(
        name=ServicePortName("default", "dns", "dns", Protocol.UDP),
        type=ServiceType.CLUSTER_IP,
        cluster_ips=(a.service_ip,),
        port=SERVICE_PORT,
        protocol=Protocol.UDP,
        target_port=ENDPOINT_PORT,
    )
    endpoints = tuple(Endpoint(ip, ENDPOINT_PORT) for ip in endpoint_ips)
    return Snapshot(generation=1, services=MappingProxyType({service.name: service}),
                    endpoints=MappingProxyType({service.name: endpoints}), node=None,
                    changed=frozenset(), node_changed=False)


async def test_stale_flow_sticks_to_the_old_endpoint_until_cleaned(pair: Pair) -> None:
    a = pair.addressing
    pair.dnat_to(a.endpoint_a, replace=False)
    assert pair.pod_answering(a.service_ip, SERVICE_PORT, CLIENT_PORT) == "A"
    # A flow that is no service's business, to show the cleaner leaves it alone.
    assert pair.pod_answering(a.endpoint_a, ENDPOINT_PORT, OTHER_CLIENT_PORT) == "A"

    pair.dnat_to(a.endpoint_b, replace=True)
    assert pair.pod_answering(a.service_ip, SERVICE_PORT, CLIENT_PORT) == "A"  # stale

    cleaner = ConntrackCleaner(families=[a.family], command_prefix=pair.client.exec_argv([]))
    # kube-proxy 1.33 leaves a service without serving endpoints alone.
    untouched = await cleaner.reconcile(only_endpoint(a))
    assert (untouched.ok, untouched.stale, untouched.deleted) == (True, 0, 0)
    assert pair.pod_answering(a.service_ip, SERVICE_PORT, CLIENT_PORT) == "A"

    cleaned = await cleaner.reconcile(only_endpoint(a, a.endpoint_b))
    family = cleaned.of(a.family)
    assert family is not None
    assert (family.error, family.listed, family.stale, family.deleted, family.vanished) == (
        None, 2, 1, 1, 0)
    assert pair.pod_answering(a.service_ip, SERVICE_PORT, CLIENT_PORT) == "B"
    assert f"sport={OTHER_CLIENT_PORT}" in pair.flows()

    settled = await cleaner.reconcile(only_endpoint(a, a.endpoint_b))
    assert (settled.ok, settled.stale, settled.deleted) == (True, 0, 0)


def synthetic_flow(a: Addressing, client_host: int, reply_endpoint: str, zone: int) -> str:
    """A ``conntrack -I`` line for a flow DNATed from the service IP to ``reply_endpoint``."""
    client = (f"fd78::{client_host:x}" if a.family is IPFamily.IPV6
              else f"10.78.{client_host // 250}.{client_host % 250 + 1}")
    sport = 20000 + client_host
    return (f"-I -p udp -s {client} -d {a.service_ip} --sport {sport} --dport {SERVICE_PORT} "
            f"--reply-src {reply_endpoint} --reply-dst {client} --reply-port-src {ENDPOINT_PORT} "
            f"--reply-port-dst {sport} -t 600 -w {zone}\n")


async def test_bulk_cleanup_deletes_exactly_the_stale_flows(pair: Pair) -> None:
    """Thousands of flows (some in another conntrack zone); only those to A go."""
    a = pair.addressing
    pair.dnat_to(a.endpoint_b, replace=False)  # makes the namespace track connections
    flows = [synthetic_flow(a, host, a.endpoint_a if host % 3 == 0 else a.endpoint_b,
                            zone=5 if host % 7 == 0 else 0)
             for host in range(3000)]
    pair.client.run(["conntrack", "-R", "-"], input="".join(flows))
    to_a = sum(1 for host in range(3000) if host % 3 == 0)

    cleaner = ConntrackCleaner(families=[a.family], command_prefix=pair.client.exec_argv([]))
    stats = await cleaner.reconcile(only_endpoint(a, a.endpoint_b))
    family = stats.of(a.family)
    assert family is not None
    assert (family.error, family.listed, family.stale, family.deleted) == (
        None, 3000, to_a, to_a)
    remaining = pair.flows()
    assert f"src={a.endpoint_a} " not in remaining
    assert remaining.count(f"src={a.endpoint_b} ") == 3000 - to_a
