"""Service ports whose strings no kernel payload can hold: the check, and renderers that drop
exactly those ports (iptables planner, userspace selection and portals, ``kproxy rules``)."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from kproxy.clock import FakeClock
from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.healthz import ProxierHealth
from kproxy.iptables.context import plan_context
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.proxier import IptablesProxier, Sysctls
from kproxy.iptables.restore import (
    ArgToken,
    join_payloads,
    render_delta,
    render_full,
    tokenize_args,
)
from kproxy.iptables.rulescmd import write_rules
from kproxy.iptables.ruleset import Ruleset, Table
from kproxy.iptables.serviceview import family_view
from kproxy.metrics import ProxyMetrics
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from kproxy.rejections import RejectionLog
from kproxy.renderable import (
    MAX_COMMENT_BYTES,
    MAX_NAME_TEXT,
    cidr_ok,
    ip_ok,
    port_ok,
    service_port_problem,
    text_problem,
)
from kproxy.skipped import SkipKind, SkippedPorts, SkipReason, skipped_comment
from kproxy.state import Snapshot, StateTracker
from kproxy.userspace.portal import plan_portals
from kproxy.userspace.selection import ListenerKey, Scope, select_port

V4, V6 = IPFamily.IPV4, IPFamily.IPV6
NODE = NodeInfo("node-a", pod_cidrs=("10.244.1.0/24",),
                addresses=(("InternalIP", "192.168.0.5"), ("InternalIP", "fd00::5")))
CONFIG = ProxyConfig(hostname="node-a", cluster_cidrs=("10.244.0.0/16", "fd00:244::/48"),
                     detect_local_mode=DetectLocalMode.CLUSTER_CIDR)

# Strings as a buggy or hostile admission chain could let through (the model rejects them;
# these records are built directly, as the renderers must survive them anyway).
BAD_TEXTS = {
    "nul": "a\x00b",
    "leading-nul": "\x00ns",
    "newline": "a\nb",
    "carriage-return": "a\rb",
    "tab": "a\tb",
    "vertical-tab": "a\x0bb",
    "delete": "a\x7fb",
    "non-ascii": "café",
    "line-separator": "a\u2028b",
    "too-long": "n" * 300,
}
# Printable ASCII that a valid object never holds, but the escaping carries safely.
ODD_BUT_RENDERABLE = ('a"b', "a\\b", "a'b", "a b", "10.0.0.0/8", "#x", "-j ACCEPT", "")


def service_port(namespace: str = "default", name: str = "web", port_name: str = "http",
                 cluster_ip: str = "10.96.0.10", **fields: Any) -> ServicePort:
    protocol = fields.pop("protocol", Protocol.TCP)
    return ServicePort(ServicePortName(namespace, name, port_name, protocol),
                       fields.pop("type", ServiceType.CLUSTER_IP),
                       (cluster_ip, *fields.pop("more_ips", ())), fields.pop("port", 80),
                       protocol, 8080, **fields)


def good_ports() -> list[ServicePort]:
    return [
        service_port(name="web"),
        service_port(name="lb", cluster_ip="10.96.0.20", more_ips=("fd00:96::20",),
                     type=ServiceType.LOAD_BALANCER, port=443, node_port=30443,
                     external_ips=("198.51.100.1",), load_balancer_ips=("203.0.113.1",),
                     load_balancer_source_ranges=("192.168.0.0/16",),
                     external_traffic_policy=TrafficPolicy.LOCAL,
                     health_check_node_port=32000,
                     session_affinity=SessionAffinity.CLIENT_IP),
        service_port(name="dns", port_name="dns", cluster_ip="10.96.0.53", port=53,
                     protocol=Protocol.UDP),
    ]


def bad_ports() -> list[ServicePort]:
    ports = []
    for index, (label, text) in enumerate(BAD_TEXTS.items()):
        ip = f"10.96.1.{index + 1}"
        ports += [service_port(namespace=text, name=f"ns-{label}", cluster_ip=ip),
                  service_port(name=text, cluster_ip=ip, port=81),
                  service_port(name=f"port-{label}", port_name=text, cluster_ip=ip, port=82)]
    return ports


def endpoints_for(port: ServicePort) -> tuple[Endpoint, ...]:
    return (Endpoint("10.244.1.2", 8080, node_name="node-a"),
            Endpoint("10.244.2.2", 8080, node_name="node-b"),
            Endpoint("fd00:244:1::2", 8080, node_name="node-a"))


def snapshot(ports: list[ServicePort],
             endpoints: dict[ServicePortName, tuple[Endpoint, ...]] | None = None,
             changed: frozenset[ServicePortName] = frozenset()) -> Snapshot:
    services = {port.name: port for port in ports}
    if endpoints is None:
        endpoints = {port.name: endpoints_for(port) for port in ports}
    return Snapshot(1, MappingProxyType(services), MappingProxyType(endpoints), NODE,
                    changed, False)


def planned(ports: list[ServicePort], family: IPFamily = V4) -> tuple[Ruleset, IncrementalPlanner]:
    planner = IncrementalPlanner(plan_context(CONFIG, NODE, family, random_fully=False))
    return planner.full(snapshot(ports)), planner


def payload(ruleset: Ruleset) -> str:
    return join_payloads(render_full(ruleset))


# -- the check ----------------------------------------------------------------------------


@pytest.mark.parametrize("label", sorted(BAD_TEXTS))
def test_unrenderable_texts_are_named(label: str) -> None:
    assert text_problem(BAD_TEXTS[label]) is not None


@pytest.mark.parametrize("text", ["default/web:http", *ODD_BUT_RENDERABLE, "x" * MAX_NAME_TEXT])
def test_printable_ascii_within_the_length_is_renderable(text: str) -> None:
    assert text_problem(text) is None


def test_reasons_say_what_is_wrong() -> None:
    assert text_problem("a\x00b") == "contains control character '\\x00'"
    assert text_problem("café") == "contains non-ASCII character 'é'"
    assert text_problem("n" * 300) == f"longer than {MAX_NAME_TEXT} characters (300)"
    assert text_problem(7) == "not a string: int"
    port = service_port(port_name="a\nb")
    assert service_port_problem(port) == "port name contains control character '\\n'"


@pytest.mark.parametrize(("text", "ok"), [
    ("10.0.0.1", True), ("255.255.255.255", True), ("fd00::1", True), ("::ffff:1.2.3.4", True),
    ("256.0.0.1", False), ("10.0.0", False), ("010.0.0.1", False), ("10.0.0.1 ", False),
    ("fe80::1%eth0", False), ("fd00::1::2", False), ("", False), ("10.0.0.1/32", False),
    ("\uff11.2.3.4", False), (None, False),
])
def test_ip_addresses(text: object, ok: bool) -> None:
    assert ip_ok(text) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("10.0.0.0/8", True), ("0.0.0.0/0", True), ("fd00::/16", True), ("::/128", True),
    ("10.0.0.0/33", False), ("fd00::/129", False), ("10.0.0.0", False), ("10.0.0.0/", False),
    ("10.0.0.0/+8", False), ("10.0.0.0/\uff18", False), ("x/8", False),
])
def test_cidrs(text: str, ok: bool) -> None:
    assert cidr_ok(text) is ok


@pytest.mark.parametrize(("number", "ok"), [
    (1, True), (65535, True), (0, False), (65536, False), (-1, False), (True, False),
    ("80", False), (80.0, False),
])
def test_ports(number: object, ok: bool) -> None:
    assert port_ok(number) is ok


@pytest.mark.parametrize(("fields", "reason"), [
    ({"port": 0}, "port 0 out of range"),
    ({"node_port": 70000}, "node port 70000 out of range"),
    ({"health_check_node_port": -1}, "health check node port -1 out of range"),
    ({"affinity_timeout_seconds": 0}, "affinity timeout 0 out of range"),
    ({"external_ips": ("1.2.3.4 -j ACCEPT",)},
     "external IP '1.2.3.4 -j ACCEPT' is not an IP address"),
    ({"load_balancer_source_ranges": ("10.0.0.0/99",)},
     "source range '10.0.0.0/99' is not a CIDR"),
])
def test_port_fields_out_of_what_a_payload_holds(fields: dict[str, Any], reason: str) -> None:
    assert service_port_problem(service_port(**fields)) == reason


def test_bad_endpoints_are_named() -> None:
    port = service_port()
    assert service_port_problem(port, (Endpoint("10.244.1.2\n", 80),)) == (
        "endpoint IP '10.244.1.2\\n' is not an IP address")
    assert service_port_problem(port, (Endpoint("10.244.1.2", 0),)) == (
        "endpoint '10.244.1.2' port 0 out of range")


def comments_of(ruleset: Ruleset) -> list[str]:
    found = []
    for rules in ruleset.tables.values():
        for chain in rules.chains.values():
            for rule in chain.rules:
                tokens: list[ArgToken] = tokenize_args(rule)
                found += [tokens[i + 1].text for i, token in enumerate(tokens[:-1])
                          if token.text == "--comment"]
    return found


@pytest.mark.parametrize("family", [V4, V6])
def test_the_longest_renderable_name_keeps_every_comment_within_the_kernels_limit(
        family: IPFamily) -> None:
    """Every kind of comment, built from a name at the limit, fits in XT_MAX_COMMENT_LEN."""
    namespace = "n" * (MAX_NAME_TEXT - 2 * 15 - 2)
    port = replace(good_ports()[1], name=ServicePortName(namespace, "l" * 15, "p" * 15,
                                                         Protocol.TCP))
    assert service_port_problem(port) is None
    lengths = [len(text.encode()) for text in comments_of(planned([port], family)[0])]
    assert len(lengths) > 10 and max(lengths) <= MAX_COMMENT_BYTES
    without_endpoints = planned([port], family)[1]
    empty = without_endpoints.full(snapshot([port], {}))
    assert max(len(text.encode()) for text in comments_of(empty)) <= MAX_COMMENT_BYTES


# -- the iptables planner drops exactly the bad ports -------------------------------------


@pytest.mark.parametrize("family", [V4, V6])
def test_planner_drops_exactly_the_unrenderable_ports(family: IPFamily) -> None:
    clean, _ = planned(good_ports(), family)
    mixed, planner = planned(good_ports() + bad_ports(), family)
    assert payload(mixed) == payload(clean)
    # A port's own strings are checked before its family: every family's planner names it.
    assert set(planner.skipped) == {port.name for port in bad_ports()}
    assert all(reason.kind is SkipKind.UNRENDERABLE for reason in planner.skipped.values())


def test_a_bad_endpoint_drops_its_port_in_its_family_only() -> None:
    ports = good_ports()
    lb = ports[1]
    endpoints = {port.name: endpoints_for(port) for port in ports}
    endpoints[lb.name] = (*endpoints[lb.name], Endpoint("fd00:244:1::3%eth0", 8080))
    v4 = IncrementalPlanner(plan_context(CONFIG, NODE, V4, random_fully=False))
    v6 = IncrementalPlanner(plan_context(CONFIG, NODE, V6, random_fully=False))
    assert payload(v4.full(snapshot(ports, endpoints))) == payload(planned(ports, V4)[0])
    assert not v4.skipped
    assert payload(v6.full(snapshot(ports, endpoints))) == payload(planned(ports[::2], V6)[0])
    assert list(v6.skipped) == [lb.name]
    assert "fd00:244:1::3%eth0" in v6.skipped[lb.name].text


def test_partial_syncs_skip_a_port_that_turns_bad_and_take_it_back_when_fixed() -> None:
    ports = good_ports()
    planner = IncrementalPlanner(plan_context(CONFIG, NODE, V4, random_fully=False))
    planner.full(snapshot(ports))
    web = ports[0]
    broken = replace(web, external_ips=("198.51.100.9\n-A INPUT -j DROP",))
    delta = planner.partial(snapshot([broken, *ports[1:]], changed=frozenset({web.name})))
    assert list(planner.skipped) == [web.name]
    # Its chains and dispatch entries go, as for a deleted service; no rule of it is written.
    assert "-A INPUT" not in join_payloads(render_delta(delta))
    assert delta.delete
    delta = planner.partial(snapshot(ports, changed=frozenset({web.name})))
    assert not planner.skipped
    assert planner.full(snapshot(ports)).rule_count == planned(ports)[0].rule_count


# -- userspace portals --------------------------------------------------------------------


def test_portals_leave_out_an_unrenderable_port() -> None:
    context = plan_context(CONFIG, NODE, V4)
    good = good_ports()
    bad = [port for port in bad_ports() if port.name.protocol is Protocol.TCP]
    selections = []
    ports: dict[ListenerKey, int] = {}
    for index, port in enumerate(good + bad):
        view = family_view(port, V4)
        assert view is not None
        selection = select_port(view, endpoints_for(port)[:2], node_name="node-a", zone="")
        selections.append(selection)
        for scope in Scope:
            ports[selection.key(scope)] = 40000 + 3 * index + list(Scope).index(scope)
    clean = plan_portals(selections[:len(good)], ports, context)
    assert payload(plan_portals(selections, ports, context)) == payload(clean)


# -- reporting ----------------------------------------------------------------------------


def test_skipped_ports_are_logged_once_and_again_when_the_reason_changes(
        caplog: pytest.LogCaptureFixture) -> None:
    name = ServicePortName("a\x00b", "web", "http", Protocol.TCP)
    first = SkipReason(SkipKind.UNRENDERABLE, "namespace contains control character '\\x00'")
    second = SkipReason(SkipKind.UNSUPPORTED, "SCTP is not supported in userspace mode")
    skipped = SkippedPorts()
    with caplog.at_level(logging.INFO, logger="kproxy.skipped"):
        for _ in range(3):
            skipped.update({name: first})
        skipped.update({name: second})
        skipped.update({name: second})
        skipped.update({})
    lines = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert lines == [
        (logging.ERROR, "service port 'a\\x00b/web:http/TCP' not programmed: unrenderable: "
                        "namespace contains control character '\\x00'"),
        (logging.WARNING, "service port 'a\\x00b/web:http/TCP' not programmed: unsupported: "
                          "SCTP is not supported in userspace mode"),
        (logging.INFO, "service port 'a\\x00b/web:http/TCP' no longer skipped"),
    ]
    assert skipped.counts == {SkipKind.UNRENDERABLE: 1, SkipKind.UNSUPPORTED: 1}
    assert skipped.current == {}


def test_skipped_comment_is_one_line_whatever_the_name_holds() -> None:
    name = ServicePortName("a\nb\u2028", "c\x00", "p", Protocol.TCP)
    line = skipped_comment(name, SkipReason(SkipKind.UNRENDERABLE, "namespace contains x"))
    assert line == "# skipped a\\nb\\u2028/c\\x00:p/TCP: unrenderable: namespace contains x\n"


def test_kproxy_rules_lists_the_skipped_ports_as_comments_before_the_payloads() -> None:
    ports = [*good_ports(), service_port(name="web", port_name="a\x00b", port=81),
             service_port(namespace="x" * 300, name="web")]
    out = io.StringIO()
    write_rules(CONFIG, snapshot(ports), out)
    text = out.getvalue()
    head = text.split("# IPv4:")[0]
    assert head == (
        "# skipped default/web:a\\x00b/TCP: unrenderable: port name contains control "
        "character '\\x00'\n"
        f"# skipped {'x' * 300}/web:http/TCP: unrenderable: namespace longer than "
        f"{MAX_NAME_TEXT} characters (300)\n")
    clean = io.StringIO()
    write_rules(CONFIG, snapshot(good_ports()), clean)
    assert text[len(head):] == clean.getvalue()


class _Sysctls(Sysctls):
    """Kept in a dict: a proxier in a unit test must never touch the host's."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def read(self, key: str) -> str | None:
        return self.values.get(key)

    def write(self, key: str, value: str) -> None:
        self.values[key] = value


async def test_the_iptables_proxier_programs_the_rest_and_counts_the_skipped_port() -> None:
    kernel = FakeIptables(families=(V4,))
    proxier = IptablesProxier(CONFIG, FakeBackend(kernel), clock=FakeClock(), families=(V4,),
                              sysctls=_Sysctls())
    bad = service_port(name="a\x00b", cluster_ip="10.96.0.99")
    assert (await proxier.sync(snapshot([*good_ports(), bad]))).ok
    assert list(proxier.skipped.current) == [bad.name]
    clean = FakeIptables(families=(V4,))
    planner = IncrementalPlanner(plan_context(CONFIG, NODE, V4))
    clean.apply_restore(V4, payload(planner.full(snapshot(good_ports()))))
    FakeBackend(clean).ensure_jumps(V4, planner.jumps)
    assert kernel.save(V4, Table.NAT) == clean.save(V4, Table.NAT)
    assert (await proxier.sync(snapshot([*good_ports(), bad]))).ok
    tracker = StateTracker()
    metrics = ProxyMetrics(mode="iptables", node_name="node-a", tracker=tracker,
                           rejections=RejectionLog(), health=ProxierHealth(FakeClock(), 60.0),
                           proxier=lambda: proxier, process_metrics=False).render().decode()
    assert 'kproxy_sync_proxy_rules_skipped_service_ports_total{kind="unrenderable"} 1.0' in metrics
    assert 'kproxy_skipped_service_ports{kind="unrenderable"} 1.0' in metrics
    assert 'kproxy_skipped_service_ports{kind="unsupported"} 0.0' in metrics
