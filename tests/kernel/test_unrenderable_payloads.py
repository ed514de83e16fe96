"""A payload holding, beside good services, ports with every kind of unrenderable name loads
with both iptables-restore variants, and the kernel prints the good chains back as planned.

The ports are built directly (the model would reject their names): the renderers must keep
the payload whole for any record. Each test uses its own network namespace.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.devcluster.netns import NetNamespace
from kproxy.iptables.context import plan_context
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.restore import join_payloads, parse_save, render_full
from kproxy.iptables.rulescmd import write_rules
from kproxy.iptables.ruleset import Ruleset
from kproxy.iptables.serviceview import family_view
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
    TrafficPolicy,
)
from kproxy.state import Snapshot
from kproxy.userspace.portal import plan_portals
from kproxy.userspace.selection import ListenerKey, Scope, select_port

pytestmark = pytest.mark.kernel

VARIANTS = ("legacy", "nft")
NODE = NodeInfo("node-a", pod_cidrs=("10.244.1.0/24",),
                addresses=(("InternalIP", "192.168.0.5"), ("InternalIP", "fd00::5")))
CONFIG = ProxyConfig(hostname="node-a", cluster_cidrs=("10.244.0.0/16", "fd00:244::/48"),
                     detect_local_mode=DetectLocalMode.CLUSTER_CIDR)
# Left out of the payload, with a reason.
UNRENDERABLE = ("\x00", "\x00ns", "a\x00b", "a\nb", "a\n-A INPUT -j DROP", "café", "名前",
                "a\u2028b", "a\rb", "a\tb", "a\x7fb", "n" * 300)
# No valid object holds these, but they are printable ASCII: rendered, quoted and escaped,
# and the kernel must print them back exactly as planned.
ODD = ('a"b', "a\\b", "a'b", "a\\", '"', "a b", "-j ACCEPT", "#", "")


def port(namespace: str, name: str, port_name: str, cluster_ips: tuple[str, ...],
         number: int = 80, **fields: object) -> ServicePort:
    return ServicePort(ServicePortName(namespace, name, port_name, Protocol.TCP),
                       fields.pop("type", ServiceType.CLUSTER_IP), cluster_ips,  # type: ignore[arg-type]
                       number, Protocol.TCP, 8080, **fields)  # type: ignore[arg-type]


def good_ports() -> list[ServicePort]:
    return [
        port("default", "web", "http", ("10.96.0.10", "fd00:96::10")),
        port("default", "lb", "https", ("10.96.0.20", "fd00:96::20"), 443,
             type=ServiceType.LOAD_BALANCER, node_port=30443,
             load_balancer_ips=("203.0.113.1", "fd00:113::1"),
             load_balancer_source_ranges=("192.168.0.0/16", "fd00::/16"),
             external_traffic_policy=TrafficPolicy.LOCAL, health_check_node_port=32000),
    ]


def named_ports(texts: tuple[str, ...], first: int) -> list[ServicePort]:
    ports = []
    for index, text in enumerate(texts, start=first):
        ips = (f"10.96.1.{index + 1}", f"fd00:96::1:{index + 1}")
        # Every place a name goes, with a NodePort and an LB so that every comment is built.
        extra = {"type": ServiceType.LOAD_BALANCER, "node_port": 31000 + index,
                 "load_balancer_ips": (f"203.0.113.{index + 10}",),
                 "load_balancer_source_ranges": ("192.168.0.0/16",)}
        ports += [port(text, f"ns{index}", "http", ips, 80, **extra),
                  port("default", text, "http", ips, 81),
                  port("default", f"port{index}", text, ips, 82)]
    return ports


def odd_ports() -> list[ServicePort]:
    return named_ports(ODD, 100)


def bad_ports() -> list[ServicePort]:
    ports = named_ports(UNRENDERABLE, 0)
    ports.append(port("default", "badip", "http", ("10.96.2.1\n-A INPUT -j DROP",), 80))
    ports.append(port("default", "badport", "http", ("10.96.2.2",), 0))
    return ports


def endpoints() -> tuple[Endpoint, ...]:
    return (Endpoint("10.244.1.2", 8080, node_name="node-a"),
            Endpoint("10.244.2.2", 8080, node_name="node-b"),
            Endpoint("fd00:244:1::2", 8080, node_name="node-a"))


def snapshot(ports: list[ServicePort]) -> Snapshot:
    return Snapshot(1, MappingProxyType({p.name: p for p in ports}),
                    MappingProxyType({p.name: endpoints() for p in ports}), NODE,
                    frozenset(), False)


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    for variant in VARIANTS:
        if shutil.which(f"iptables-{variant}-restore") is None:
            pytest.fail(f"iptables-{variant}-restore is not installed")
    with NetNamespace("render") as netns:
        yield netns


def tool(variant: str, family: IPFamily, what: str) -> str:
    base = "iptables" if family is IPFamily.IPV4 else "ip6tables"
    return f"{base}-{variant}-{what}"


def load(netns: NetNamespace, variant: str, family: IPFamily, text: str) -> None:
    result = subprocess.run(netns.exec_argv([tool(variant, family, "restore"), "--noflush"]),
                            input=text.encode(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def saved_chains(netns: NetNamespace, variant: str, family: IPFamily
                 ) -> dict[str, dict[str, tuple[str, ...]]]:
    output = subprocess.run(netns.exec_argv([tool(variant, family, "save")]), check=True,
                            capture_output=True, text=True, timeout=60).stdout
    return {table.value: {name: parsed.chains[name].rules for name in parsed.kproxy_chains()}
            for table, parsed in parse_save(output).items()}


def planned_chains(ruleset: Ruleset) -> dict[str, dict[str, tuple[str, ...]]]:
    return {table.value: {name: chain.rules for name, chain in rules.chains.items()}
            for table, rules in ruleset.tables.items()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", list(IPFamily))
def test_iptables_payload_with_unrenderable_ports_loads_with_the_good_services(
        namespace: NetNamespace, variant: str, family: IPFamily) -> None:
    planner = IncrementalPlanner(plan_context(CONFIG, NODE, family))
    ruleset = planner.full(snapshot(good_ports() + odd_ports() + bad_ports()))
    assert set(planner.skipped) == {p.name for p in bad_ports()}
    load(namespace, variant, family, join_payloads(render_full(ruleset)))
    # The other services' chains are in the kernel exactly as planned (so the next sync
    # finds nothing to rewrite), and nothing of the bad ones is.
    assert saved_chains(namespace, variant, family) == planned_chains(ruleset)
    clean = IncrementalPlanner(plan_context(CONFIG, NODE, family)).full(
        snapshot(good_ports() + odd_ports()))
    assert join_payloads(render_full(ruleset)) == join_payloads(render_full(clean))
    assert any(name.startswith("KPROXY-SVC-") for name in planned_chains(ruleset)["nat"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kproxy_rules_output_with_skipped_ports_loads(namespace: NetNamespace,
                                                       variant: str) -> None:
    out = io.StringIO()
    write_rules(CONFIG, snapshot(good_ports() + odd_ports() + bad_ports()), out)
    text = out.getvalue()
    assert text.count("\n# skipped ") + text.startswith("# skipped ") == len(bad_ports())
    ipv4 = text.split("# IPv6:")[0]  # the skipped lines, then the IPv4 payload
    load(namespace, variant, IPFamily.IPV4, ipv4)
    ruleset = IncrementalPlanner(plan_context(CONFIG, NODE, IPFamily.IPV4)).full(
        snapshot(good_ports() + odd_ports()))
    assert saved_chains(namespace, variant, IPFamily.IPV4) == planned_chains(ruleset)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", list(IPFamily))
def test_userspace_portals_with_unrenderable_ports_load_with_the_good_services(
        namespace: NetNamespace, variant: str, family: IPFamily) -> None:
    context = plan_context(CONFIG, NODE, family)
    selections = []
    listener_ports: dict[ListenerKey, int] = {}
    served = good_ports() + odd_ports()
    for index, service_port in enumerate(served + bad_ports()):
        if "\n" in service_port.cluster_ips[0]:
            continue  # no family view can be made of it; the proxier skips it before this
        view = family_view(service_port, family)
        if view is None:
            continue
        ipv6 = family is IPFamily.IPV6
        members = tuple(e for e in endpoints() if (":" in e.ip) == ipv6)
        selection = select_port(view, members, node_name="node-a", zone="")
        selections.append(selection)
        for offset, scope in enumerate(Scope):
            listener_ports[selection.key(scope)] = 40000 + 2 * index + offset
    ruleset = plan_portals(selections, listener_ports, context)
    load(namespace, variant, family, join_payloads(render_full(ruleset)))
    clean = plan_portals(selections[:len(served)], listener_ports, context)
    assert saved_chains(namespace, variant, family) == planned_chains(clean)
    assert any("REDIRECT" in rule for rule in planned_chains(clean)["nat"]
               ["KPROXY-PORTALS-CONTAINER"])


_LIBIPTC_CHILD = """
import json, sys
from kproxy.iptables.libiptc_backend import LibiptcBackend
from kproxy.iptables.ruleset import Table
from kproxy.model.types import IPFamily
payloads = json.load(sys.stdin)
LibiptcBackend().restore_all(IPFamily.IPV4, {Table(t): text for t, text in payloads.items()})
"""


def test_libiptc_programs_the_good_services_beside_unrenderable_ports(
        namespace: NetNamespace, tmp_path: Path) -> None:
    """libiptc takes the same rules (IPv4: its IPv6 runs in a child process of its own)."""
    if importlib.util.find_spec("iptc") is None:
        pytest.fail("python-iptables is not installed (pip install 'kproxy[libiptc]')")
    family = IPFamily.IPV4
    ruleset = IncrementalPlanner(plan_context(CONFIG, NODE, family)).full(
        snapshot(good_ports() + odd_ports() + bad_ports()))
    payloads = {table.value: text for table, text in render_full(ruleset).items()}
    namespace.run([sys.executable, "-c", _LIBIPTC_CHILD], input=json.dumps(payloads),
                  timeout=120, env={**os.environ, "XTABLES_LOCKFILE": str(tmp_path / "lock")})
    assert saved_chains(namespace, "legacy", family) == planned_chains(ruleset)
