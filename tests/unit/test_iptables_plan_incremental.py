"""The incremental planner: full plans are valid rulesets, and full(s1) + partial(s2) is full(s2).

Consistency is checked twice: on the records (the chains full(s1) had, with the delta
applied, against a fresh full(s2)), and in the validating in-memory iptables (the rendered
payloads are applied as the kernel would, and must leave the same chains).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.iptables import planner as planner_module
from kproxy.iptables.endpointchains import base32_prefix
from kproxy.iptables.fake import EXTENSION_TARGETS, STANDARD_TARGETS, FakeIptables
from kproxy.iptables.names import name_hash
from kproxy.iptables.plan import IncrementalPlanner, PlanContext, plan_context
from kproxy.iptables.restore import join_payloads, jump_target, render_delta, render_full
from kproxy.iptables.ruleset import MAX_CHAIN_NAME, Chain, Ruleset, RulesetDelta, Table
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
from kproxy.state import Snapshot

NODE = "node-a"
CONFIG = ProxyConfig(
    hostname=NODE,
    cluster_cidrs=("10.244.0.0/16", "fd00:244::/48"),
    detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
)
TARGETS = STANDARD_TARGETS | EXTENSION_TARGETS
ChainMap = dict[Table, dict[str, tuple[str, ...]]]

# --- random snapshots ------------------------------------------------------------------------

NAMES = [ServicePortName(f"ns{i % 2}", f"svc{i}", port, protocol)
         for i in range(6) for port, protocol in (("http", Protocol.TCP), ("dns", Protocol.UDP))]


@st.composite
def service_ports(draw: st.DrawFn, name: ServicePortName) -> ServicePort:
    index = NAMES.index(name)
    families = draw(st.sampled_from(["4", "6", "46", "64"]))
    ips = {"4": f"10.96.0.{index + 1}", "6": f"fd00:96::{index + 1:x}"}
    kind = draw(st.sampled_from(list(ServiceType)[:3]))
    node_port = 30000 + index if kind is not ServiceType.CLUSTER_IP else None
    load_balancer = kind is ServiceType.LOAD_BALANCER
    external_local = draw(st.booleans()) and (
        kind is not ServiceType.CLUSTER_IP or draw(st.booleans())
    )
    return ServicePort(
        name=name,
        type=kind,
        cluster_ips=tuple(ips[family] for family in families),
        port=draw(st.sampled_from([53, 80, 443])),
        protocol=name.protocol,
        target_port=8080,
        node_port=node_port,
        external_ips=draw(st.sampled_from([(), ("192.168.99.1",), ("192.168.99.1", "fd00:99::1")])),
        load_balancer_ips=draw(st.sampled_from([(f"203.0.113.{index}", "fd00:113::1")]))
        if load_balancer else (),
        load_balancer_source_ranges=draw(
            st.sampled_from([(), ("192.168.0.0/16",), ("0.0.0.0/0",), ("fd00::/8", "1.0.0.0/8")])
        ) if load_balancer else (),
        external_traffic_policy=TrafficPolicy.LOCAL if external_local else TrafficPolicy.CLUSTER,
        internal_traffic_policy=draw(st.sampled_from(list(TrafficPolicy))),
        health_check_node_port=32000 + index if load_balancer and external_local else None,
        session_affinity=draw(st.sampled_from(list(SessionAffinity))),
        affinity_timeout_seconds=draw(st.sampled_from([60, 10800])),
    )


ENDPOINT_IPS = [f"10.244.{i % 3}.{i}" for i in range(1, 8)] + [f"fd00:244::{i}" for i in (1, 2)]


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[Endpoint, ...]:
    ips = draw(st.lists(st.sampled_from(ENDPOINT_IPS), unique=True, max_size=5))
    result = []
    for ip in sorted(ips):
        ready = draw(st.booleans())
        result.append(Endpoint(
            ip=ip,
            port=draw(st.sampled_from([8080, 8443])),
            ready=ready,
            serving=ready or draw(st.booleans()),
            terminating=not ready and draw(st.booleans()),
            node_name=draw(st.sampled_from([NODE, "node-b", None])),
            zone_hints=draw(st.sampled_from([None, frozenset({"zone-a"}), frozenset({"zone-b"})])),
        ))
    return tuple(result)


@st.composite
def nodes(draw: st.DrawFn) -> NodeInfo | None:
    if not draw(st.integers(0, 9)):
        return None
    zone = draw(st.sampled_from(["zone-a", "zone-b", None]))
    return NodeInfo(
        NODE,
        labels=(("topology.kubernetes.io/zone", zone),) if zone else (),
        pod_cidrs=draw(st.sampled_from([(), ("10.244.1.0/24", "fd00:244:1::/64")])),
        addresses=draw(st.sampled_from([
            (("InternalIP", "192.168.0.5"), ("InternalIP", "fd00::5")),
            (("InternalIP", "192.168.1.9"),),
            (),
        ])),
    )


State = tuple[
    dict[ServicePortName, ServicePort], dict[ServicePortName, tuple[Endpoint, ...]],
    NodeInfo | None,
]


@st.composite
def states(draw: st.DrawFn) -> State:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    services = {name: draw(service_ports(name)) for name in names}
    endpoint_names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    slices = {name: draw(endpoints()) for name in endpoint_names}
    return services, {name: eps for name, eps in slices.items() if eps}, draw(nodes())


def snapshot(
    services: Mapping[ServicePortName, ServicePort],
    endpoint_map: Mapping[ServicePortName, tuple[Endpoint, ...]],
    node: NodeInfo | None,
    changed: Iterable[ServicePortName] = (),
    node_changed: bool = False,
) -> Snapshot:
    return Snapshot(
        generation=1,
        services=MappingProxyType(dict(services)),
        endpoints=MappingProxyType(dict(endpoint_map)),
        node=node,
        changed=frozenset(changed),
        node_changed=node_changed,
    )


def transition(first: State, second: State) -> tuple[Snapshot, Snapshot]:
    """Two snapshots, the second carrying the changes the tracker would report."""
    before = snapshot(*first)
    after = snapshot(*second)
    return before, replace(after, changed=frozenset(changed_names(before, after)),
                           node_changed=before.node != after.node)


def changed_names(before: Snapshot, after: Snapshot) -> set[ServicePortName]:
    """What the state tracker would report: ports whose service or endpoints differ."""
    names = set(before.services) | set(after.services)
    names |= set(before.endpoints) | set(after.endpoints)
    return {
        name for name in names
        if before.services.get(name) != after.services.get(name)
        or before.endpoints_of(name) != after.endpoints_of(name)
    }


# --- checks ------------------------------------------------------------------------------------


def chain_map(ruleset: Ruleset) -> ChainMap:
    return {
        table: {name: chain.rules for name, chain in rules.chains.items()}
        for table, rules in ruleset.tables.items()
    }


def apply_delta(chains: ChainMap, delta: RulesetDelta) -> ChainMap:
    result = {table: dict(names) for table, names in chains.items()}
    for table, gone in delta.delete.items():
        for name in gone:
            del result[table][name]
    for table, written in delta.write.items():
        for chain in written:
            result[table][chain.name] = chain.rules
    return result


def flatten(chains: Mapping[str, tuple[str, ...]], name: str) -> list[str]:
    """A dispatch chain's rules with bucket jumps replaced by the buckets' rules."""
    rules: list[str] = []
    for rule in chains[name]:
        target = jump_target(rule)
        if target is not None and target.startswith(("KPROXY-D-", "KPROXY-P-")):
            rules.extend(flatten(chains, target))
        else:
            rules.append(rule)
    return rules


def behaviour(chains: ChainMap) -> dict[Table, dict[str, tuple[str, ...]]]:
    """Chains as a packet sees them: dispatch trees flattened, bucket chains left out."""
    roots = ("KPROXY-SERVICES", "KPROXY-NODEPORTS", "KPROXY-EXTERNAL-SERVICES",
             "KPROXY-PROXY-FIREWALL")
    return {
        table: {
            name: tuple(flatten(named, name)) if name in roots else rules
            for name, rules in named.items()
            if not name.startswith(("KPROXY-D-", "KPROXY-P-"))
        }
        for table, named in chains.items()
    }


def assert_valid(ruleset: Ruleset) -> None:
    """Every chain is a kproxy chain that fits; every jump lands on a chain of its table."""
    for table, rules in ruleset.tables.items():
        names = set(rules.chains)
        for name, chain in rules.chains.items():
            assert name == chain.name and name.startswith("KPROXY-")
            assert len(name) <= MAX_CHAIN_NAME
            for rule in chain.rules:
                target = jump_target(rule)
                assert target is None or target in TARGETS or target in names, (table, rule)
    for jump in ruleset.jumps:
        assert jump_target(jump.args) in ruleset.chain_names(jump.table)
        assert "--comment \"kproxy " in jump.args


def fake_chains(fake: FakeIptables, family: IPFamily) -> ChainMap:
    return {
        table: {name: fake.rules(family, table, name) for name in fake.kproxy_chains(family, table)}
        for table in Table
    }


CONTEXTS = {
    family: plan_context(CONFIG, None, family) for family in IPFamily
}


def check_transition(
    first: Snapshot, second: Snapshot, family: IPFamily, leaf_size: int = 32
) -> RulesetDelta:
    base: PlanContext = CONTEXTS[family]
    planner = IncrementalPlanner(base, leaf_size=leaf_size)
    initial = planner.full(first)
    assert_valid(initial)
    fake = FakeIptables([family])
    fake.apply_restore(family, join_payloads(render_full(initial)))
    for jump in initial.jumps:
        fake.ensure_jump(family, jump)

    delta = planner.partial(second)
    expected = IncrementalPlanner(base, leaf_size=leaf_size).full(second)
    assert_valid(expected)
    patched = apply_delta(chain_map(initial), delta)
    assert behaviour(patched) == behaviour(chain_map(expected))
    if not delta.empty:
        fake.apply_restore(family, join_payloads(render_delta(delta)))
    assert behaviour(fake_chains(fake, family)) == behaviour(chain_map(expected))
    # The planner now stands where a fresh full plan of the second snapshot stands.
    assert planner.partial(replace(second, changed=frozenset(), node_changed=False)).empty
    return delta


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=states(), second=states(), family=st.sampled_from(list(IPFamily)))
def test_partial_after_full_equals_full(
    first: State,
    second: State,
    family: IPFamily,
) -> None:
    before, after = transition(first, second)
    check_transition(before, after, family)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=states(), second=states(), family=st.sampled_from(list(IPFamily)))
def test_partial_with_split_dispatch_trees_behaves_like_full(
    first: State,
    second: State,
    family: IPFamily,
) -> None:
    """Tiny leaves force bucket chains; a tree's shape may then depend on its history."""
    before, after = transition(first, second)
    check_transition(before, after, family, leaf_size=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=states(), second=states(), family=st.sampled_from(list(IPFamily)))
def test_crossing_the_large_cluster_threshold_replans_everything(
    first: State,
    second: State,
    family: IPFamily,
) -> None:
    before, after = transition(first, second)
    with mock.patch.object(planner_module, "LARGE_CLUSTER_ENDPOINTS", 4):
        check_transition(before, after, family)


# --- targeted cases ---------------------------------------------------------------------------


def web(endpoint_ips: Iterable[str], **fields: object) -> tuple[ServicePort, tuple[Endpoint, ...]]:
    name = NAMES[0]
    service = ServicePort(name=name, type=ServiceType.CLUSTER_IP, cluster_ips=("10.96.0.1",),
                          port=80, protocol=Protocol.TCP, target_port=8080)
    service = replace(service, **fields)  # type: ignore[arg-type]
    return service, tuple(Endpoint(ip, 8080) for ip in endpoint_ips)


def test_partial_without_changes_is_empty() -> None:
    service, eps = web(["10.244.0.1", "10.244.0.2"])
    state = snapshot({service.name: service}, {service.name: eps}, None)
    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    planner.full(state)
    assert planner.partial(state).empty
    # Reported as changed, but planned the same: still nothing to write.
    assert planner.partial(replace(state, changed=frozenset({service.name}))).empty


def test_partial_before_full_is_refused() -> None:
    service, eps = web(["10.244.0.1"])
    state = snapshot({service.name: service}, {service.name: eps}, None)
    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    try:
        planner.partial(state)
    except RuntimeError:
        return
    raise AssertionError("partial() before full() must fail")


def test_replacing_one_endpoint_writes_its_chains_only() -> None:
    service, eps = web(["10.244.0.1", "10.244.0.2"])
    state = snapshot({service.name: service}, {service.name: eps}, None)
    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    planner.full(state)
    _, new_eps = web(["10.244.0.1", "10.244.0.3"])
    delta = planner.partial(snapshot({service.name: service}, {service.name: new_eps}, None,
                                     changed={service.name}))
    written = {chain.name for chains in delta.write.values() for chain in chains}
    sep_new = "KPROXY-SEP-" + sep_hash("ns0/svc0:http", "tcp", "10.244.0.3:8080")
    sep_old = "KPROXY-SEP-" + sep_hash("ns0/svc0:http", "tcp", "10.244.0.2:8080")
    svc = "KPROXY-SVC-" + sep_hash("ns0/svc0:http", "tcp")
    assert written == {svc, sep_new}
    assert delta.delete == {Table.NAT: frozenset({sep_old})}


def test_removing_a_service_deletes_its_chains_and_rules() -> None:
    service, eps = web(["10.244.0.1"], node_port=30001, type=ServiceType.NODE_PORT)
    state = snapshot({service.name: service}, {service.name: eps}, None)
    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    full = planner.full(state)
    own = {name for name in full.chain_names(Table.NAT)
           if name.startswith(("KPROXY-SVC-", "KPROXY-SEP-", "KPROXY-EXT-"))}
    assert len(own) == 3
    delta = planner.partial(snapshot({}, {}, None, changed={service.name}))
    assert delta.delete[Table.NAT] == own
    written = {chain.name: chain.rules for chain in delta.write[Table.NAT]}
    assert written["KPROXY-NODEPORTS"] == ()
    assert len(written["KPROXY-SERVICES"]) == 1  # only the NodePorts jump is left


def test_node_change_rewrites_node_dependent_chains() -> None:
    service, eps = web(["10.244.0.1"])
    zoned = replace(eps[0], zone_hints=frozenset({"zone-a"}))
    other = Endpoint("10.244.0.2", 8080, zone_hints=frozenset({"zone-b"}))
    node = NodeInfo(NODE, addresses=(("InternalIP", "192.168.0.5"),))
    config = replace(CONFIG, nodeport_addresses=("primary",))
    planner = IncrementalPlanner(plan_context(config, node, IPFamily.IPV4))
    endpoints_map = {service.name: (zoned, other)}
    planner.full(snapshot({service.name: service}, endpoints_map, node))
    moved = replace(node, labels=(("topology.kubernetes.io/zone", "zone-a"),),
                    addresses=(("InternalIP", "192.168.0.6"),))
    delta = planner.partial(snapshot({service.name: service}, endpoints_map, moved,
                                     node_changed=True))
    written = {chain.name: chain.rules for chain in delta.write[Table.NAT]}
    assert any("-d 192.168.0.6/32" in rule for rule in written["KPROXY-SERVICES"])
    svc = "KPROXY-SVC-" + sep_hash("ns0/svc0:http", "tcp")
    assert len(written[svc]) == 2  # masquerade rule + the zone's only endpoint
    assert planner.context.zone == "zone-a"


def test_no_local_endpoint_counts() -> None:
    service, eps = web(["10.244.0.1"], internal_traffic_policy=TrafficPolicy.LOCAL)
    state = snapshot({service.name: service}, {service.name: eps}, None)
    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    planner.full(state)
    assert planner.services_without_local_endpoints == (1, 0)
    local = (replace(eps[0], node_name=NODE),)
    planner.partial(snapshot({service.name: service}, {service.name: local}, None,
                             changed={service.name}))
    assert planner.services_without_local_endpoints == (0, 0)


def sep_hash(*parts: str) -> str:
    return name_hash(*parts)


@given(st.text())
def test_fast_chain_hash_is_the_shared_one(text: str) -> None:
    assert base32_prefix(hashlib.sha256(text.encode()).digest()) == name_hash(text)


def test_crossing_the_large_cluster_threshold_drops_every_comment() -> None:
    small, eps = web(["10.244.0.1"])
    other = replace(small, name=NAMES[2], cluster_ips=("10.96.0.2",))
    other_eps = tuple(Endpoint(f"10.244.1.{i}", 8080) for i in range(1, 4))
    with mock.patch.object(planner_module, "LARGE_CLUSTER_ENDPOINTS", 3):
        planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
        planner.full(snapshot({small.name: small}, {small.name: eps}, None))
        state = snapshot({small.name: small, other.name: other},
                         {small.name: eps, other.name: other_eps}, None)
        delta = planner.partial(replace(state, changed=frozenset({other.name})))
    written = {chain.name: chain.rules for chain in delta.write[Table.NAT]}
    # The unchanged service's endpoint chain is rewritten without its comment.
    sep = "KPROXY-SEP-" + sep_hash("ns0/svc0:http", "tcp", "10.244.0.1:8080")
    assert written[sep] == (
        "-s 10.244.0.1/32 -j KPROXY-MARK-MASQ",
        "-p tcp -m tcp -j DNAT --to-destination 10.244.0.1:8080",
    )


def test_static_chain_names() -> None:
    ruleset = IncrementalPlanner(CONTEXTS[IPFamily.IPV4]).full(snapshot({}, {}, None))
    assert ruleset.chain_names(Table.NAT) == {
        "KPROXY-SERVICES", "KPROXY-NODEPORTS", "KPROXY-POSTROUTING", "KPROXY-MARK-MASQ",
        "KPROXY-PROXY-CANARY",
    }
    assert ruleset.chain_names(Table.FILTER) == {
        "KPROXY-SERVICES", "KPROXY-EXTERNAL-SERVICES", "KPROXY-NODEPORTS",
        "KPROXY-PROXY-FIREWALL", "KPROXY-FORWARD", "KPROXY-FIREWALL", "KPROXY-PROXY-CANARY",
    }
    assert ruleset.chain_names(Table.MANGLE) == {"KPROXY-PROXY-CANARY"}
    assert isinstance(next(iter(ruleset.tables[Table.NAT].chains.values())), Chain)


@st.composite
def successors(draw: st.DrawFn, state: State) -> State:
    """A state that keeps some ports of ``state`` exactly as they were (the usual case)."""
    services, endpoint_map, node = state
    fresh_services, fresh_endpoints, fresh_node = draw(states())
    kept = set(draw(st.lists(st.sampled_from(NAMES), unique=True)))
    next_services = {n: services[n] for n in kept if n in services}
    next_services.update({n: p for n, p in fresh_services.items() if n not in kept})
    next_endpoints = {n: endpoint_map[n] for n in kept if n in endpoint_map}
    next_endpoints.update({n: e for n, e in fresh_endpoints.items() if n not in kept})
    return next_services, next_endpoints, node if draw(st.booleans()) else fresh_node


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), family=st.sampled_from(list(IPFamily)),
       threshold=st.sampled_from([3, 1000]))
def test_full_reusing_cached_plans_equals_a_fresh_full(
    data: st.DataObject, family: IPFamily, threshold: int
) -> None:
    """The periodic full sync reuses port plans: it must still equal a plan from scratch."""
    first = data.draw(states())
    second = data.draw(successors(first))
    with mock.patch.object(planner_module, "LARGE_CLUSTER_ENDPOINTS", threshold):
        planner = IncrementalPlanner(CONTEXTS[family])
        planner.full(snapshot(*first))
        again = planner.full(snapshot(*second))
        fresh = IncrementalPlanner(CONTEXTS[family]).full(snapshot(*second))
    assert chain_map(again) == chain_map(fresh)
    assert again.jumps == fresh.jumps


def test_full_after_a_node_change_replans_unchanged_ports() -> None:
    service, _ = web([])
    load_balancer = replace(
        service, name=NAMES[2], cluster_ips=("10.96.0.2",), type=ServiceType.LOAD_BALANCER,
        load_balancer_ips=("203.0.113.9",), load_balancer_source_ranges=("192.168.0.0/24",),
    )
    hinted = (Endpoint("10.244.0.1", 8080, zone_hints=frozenset({"zone-a"})),
              Endpoint("10.244.0.2", 8080, zone_hints=frozenset({"zone-b"})))
    services = {service.name: service, load_balancer.name: load_balancer}
    endpoint_map = {service.name: hinted, load_balancer.name: hinted}

    def node(zone: str, ip: str) -> NodeInfo:
        return NodeInfo(NODE, labels=(("topology.kubernetes.io/zone", zone),),
                        addresses=(("InternalIP", ip),))

    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    planner.full(snapshot(services, endpoint_map, node("zone-a", "192.168.0.5")))
    moved = snapshot(services, endpoint_map, node("zone-b", "192.168.1.5"))
    again = planner.full(moved)
    assert chain_map(again) == chain_map(IncrementalPlanner(CONTEXTS[IPFamily.IPV4]).full(moved))


class _LookupOnly(Mapping[ServicePortName, Any]):
    """A mapping that allows lookups but fails any walk over all its keys."""

    def __init__(self, data: Mapping[ServicePortName, Any]) -> None:
        self._data = data

    def __getitem__(self, key: ServicePortName) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[ServicePortName]:
        raise AssertionError("partial() walked every service port")

    def __len__(self) -> int:
        return len(self._data)


def test_partial_looks_only_at_the_changed_ports() -> None:
    ports = {name: web([])[0] for name in NAMES[:1]}
    other = replace(web([])[0], name=NAMES[2], cluster_ips=("10.96.0.2",))
    ports[other.name] = other
    endpoint_map = {name: (Endpoint("10.244.0.1", 8080),) for name in ports}
    planner = IncrementalPlanner(CONTEXTS[IPFamily.IPV4])
    planner.full(snapshot(ports, endpoint_map, None))
    moved = dict(endpoint_map)
    moved[other.name] = (Endpoint("10.244.0.2", 8080),)
    state = Snapshot(2, _LookupOnly(ports), _LookupOnly(moved), None, frozenset({other.name}),
                     False)
    delta = planner.partial(state)
    assert len(delta.write[Table.NAT]) == 2  # the SVC chain and the new SEP chain
    assert planner.partial(replace(state, changed=frozenset())).empty
