"""Dispatch trees: same verdicts as the flat chain, consistent incremental output, valid names."""

from __future__ import annotations

import ipaddress
import random
import re
import shlex
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kproxy.iptables.dispatch import DispatchBy, DispatchChanges, DispatchEntry, DispatchTree
from kproxy.iptables.names import hashed_chain_name, hex_chain_name, name_hash
from kproxy.iptables.ruleset import MAX_CHAIN_NAME, Chain
from kproxy.model.types import IPFamily, Protocol

ROOT = "KPROXY-SERVICES"
PROTOCOLS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
PROTOCOL_RANK = {protocol: rank for rank, protocol in enumerate(PROTOCOLS)}

# -- a tiny packet walker over rule text -----------------------------------------------------


@dataclass(frozen=True)
class Packet:
    destination: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class ParsedRule:
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    protocol: str | None
    ports: tuple[int, int] | None
    target: str


@cache
def parse_rule(rule: str) -> ParsedRule:
    tokens = shlex.split(rule)
    destination = None
    protocol = None
    ports = None
    target = None
    index = 0
    while index < len(tokens):
        option, value = tokens[index], tokens[index + 1]
        if option == "-d":
            destination = ipaddress.ip_network(value)
        elif option == "-p":
            protocol = value
        elif option == "--dport":
            low, _, high = value.partition(":")
            ports = (int(low), int(high or low))
        elif option == "-j":
            target = value
        elif option not in ("-m", "--comment"):
            raise AssertionError(f"unexpected option {option!r} in {rule!r}")
        index += 2
    assert target is not None, rule
    if ports is not None:
        assert protocol is not None, f"a port match needs a protocol match: {rule!r}"
    return ParsedRule(destination, protocol, ports, target)


@cache
def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address)


def rule_matches(rule: str, packet: Packet) -> bool:
    parsed = parse_rule(rule)
    if parsed.destination is not None and (
        parse_address(packet.destination) not in parsed.destination
    ):
        return False
    if parsed.protocol is not None and parsed.protocol != packet.protocol.value.lower():
        return False
    return parsed.ports is None or parsed.ports[0] <= packet.port <= parsed.ports[1]


def walk(chains: Mapping[str, tuple[str, ...]], root: str, packet: Packet) -> list[str]:
    """Every leaf rule that matches ``packet``, in the order the kernel would meet them.

    Jumps to chains of the tree are followed (and return); any other target is treated as
    a rule that matched and let the packet continue, so the whole sequence is compared.
    """
    met: list[str] = []
    for rule in chains[root]:
        if rule_matches(rule, packet):
            target = parse_rule(rule).target
            if target in chains:
                met.extend(walk(chains, target, packet))
            else:
                met.append(rule)
    return met


# -- entries and the flat reference ----------------------------------------------------------


def make_entry(
    key: int, destination: str | None, protocol: Protocol, port: int, variant: int = 0
) -> DispatchEntry:
    proto = protocol.value.lower()
    parts = []
    if destination is not None:
        mask = 32 if ":" not in destination else 128
        parts.append(f"-d {destination}/{mask}")
    parts.append(f"-p {proto} -m {proto} --dport {port}")
    parts.append(f'-m comment --comment "entry {key} v{variant}"')
    parts.append(f"-j KPROXY-SVC-{key:016d}")
    return DispatchEntry(key, destination, protocol, port, " ".join(parts))


def flat_order(entries: Iterable[DispatchEntry], by: DispatchBy) -> list[DispatchEntry]:
    """The reference chain: what one flat list of rules would hold, in canonical order."""

    def address(entry: DispatchEntry) -> int:
        return -1 if entry.destination is None else int(ipaddress.ip_address(entry.destination))

    if by == "destination":
        addressed = [entry for entry in entries if entry.destination is not None]
        anywhere = [entry for entry in entries if entry.destination is None]
        return sorted(
            addressed,
            key=lambda e: (address(e), PROTOCOL_RANK[e.protocol], e.port, e.rule),
        ) + sorted(anywhere, key=lambda e: (PROTOCOL_RANK[e.protocol], e.port, e.rule))
    return sorted(entries, key=lambda e: (PROTOCOL_RANK[e.protocol], e.port, address(e), e.rule))


def packet_for(entry: DispatchEntry, family: IPFamily) -> Packet:
    fallback = "10.96.0.1" if family is IPFamily.IPV4 else "fd00:10:96::1"
    return Packet(entry.destination or fallback, entry.protocol, entry.port)


def chain_map(chains: Iterable[Chain]) -> dict[str, tuple[str, ...]]:
    return {chain.name: chain.rules for chain in chains}


def apply_changes(
    state: dict[str, tuple[str, ...]], changes: DispatchChanges
) -> dict[str, tuple[str, ...]]:
    result = dict(state)
    for chain in changes.written:
        result[chain.name] = chain.rules
    for name in changes.deleted:
        del result[name]
    return result


def check_structure(tree: DispatchTree, chains: Mapping[str, tuple[str, ...]]) -> None:
    assert tree.chains()[0].name == tree.root_name
    referenced: list[str] = []
    for name, rules in chains.items():
        assert name.startswith("KPROXY-") and len(name) <= MAX_CHAIN_NAME, name
        for rule in rules:
            target = parse_rule(rule).target
            if target.startswith(("KPROXY-D-", "KPROXY-P-")):
                assert target in chains, f"{name} jumps to missing {target}"
                assert chains[target], f"{name} jumps to empty {target}"
                referenced.append(target)
    assert sorted(referenced) == sorted(set(referenced)), "a bucket referenced twice"
    assert set(referenced) == set(chains) - {tree.root_name}, "unreferenced bucket chains"


def check_semantics(
    tree: DispatchTree,
    chains: Mapping[str, tuple[str, ...]],
    entries: Iterable[DispatchEntry],
    probes: Iterable[Packet],
) -> None:
    flat = flat_order(entries, tree.by)
    assert tree.entries() == flat
    for packet in probes:
        expected = [entry.rule for entry in flat if rule_matches(entry.rule, packet)]
        assert walk(chains, tree.root_name, packet) == expected, packet
        path = tree.path(packet.destination, packet.protocol, packet.port)
        first = next((e for e in flat if rule_matches(e.rule, packet)), None)
        assert path.entry == first, packet
        assert set(path.chains) <= set(chains)


# -- strategies ------------------------------------------------------------------------------

MAX_KEY = 120
IPV4_BASE = int(ipaddress.ip_address("10.96.0.0"))
IPV6_BASE = int(ipaddress.ip_address("fd00:10:96::"))


def addresses(family: IPFamily) -> st.SearchStrategy[str]:
    width, base = (32, IPV4_BASE) if family is IPFamily.IPV4 else (128, IPV6_BASE)
    numbers = st.one_of(
        st.integers(base, base + 300),  # a dense service range: deep, shared prefixes
        st.integers(0, 2**width - 1),  # anywhere: outliers and far buckets
        st.sampled_from([0, 2**width - 1, base]),
    )
    address = ipaddress.IPv4Address if family is IPFamily.IPV4 else ipaddress.IPv6Address
    return numbers.map(lambda number: str(address(number)))


def ports() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(30000, 30040), st.integers(0, 65535), st.sampled_from([0, 80, 65535])
    )


@st.composite
def entries(draw: st.DrawFn, family: IPFamily, by: DispatchBy) -> DispatchEntry:
    key = draw(st.integers(0, MAX_KEY))
    # Entries without destination are rare in destination mode (the node-ports jump).
    anywhere = by == "port" or key % 9 == 0
    destination = draw(st.one_of(st.none(), addresses(family)) if anywhere else addresses(family))
    return make_entry(
        key, destination, draw(st.sampled_from(PROTOCOLS)), draw(ports()), draw(st.integers(0, 2))
    )


@dataclass(frozen=True)
class Scenario:
    family: IPFamily
    by: DispatchBy
    leaf_size: int
    steps: list[tuple[list[int], list[DispatchEntry]]]  # (removal picks, additions)
    extra_probes: list[Packet]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    family = draw(st.sampled_from(list(IPFamily)))
    by: DispatchBy = draw(st.sampled_from(["destination", "port"]))
    entry = entries(family, by)
    # A first fill, then mostly small steps: small enough to be applied incrementally.
    first = draw(st.lists(entry, min_size=30, max_size=80))
    later = draw(
        st.lists(
            st.tuples(st.lists(st.integers(0, 1000), max_size=4), st.lists(entry, max_size=3)),
            max_size=25,
        )
    )
    probes = draw(
        st.lists(
            st.builds(Packet, addresses(family), st.sampled_from(PROTOCOLS), ports()),
            max_size=8,
        )
    )
    return Scenario(
        family, by, draw(st.sampled_from([1, 2, 3, 4, 8])), [([], first), *later], probes
    )


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_incremental_updates_keep_verdicts_structure_and_chain_output(scenario: Scenario) -> None:
    tree = DispatchTree(ROOT, scenario.family, by=scenario.by, leaf_size=scenario.leaf_size)
    model: dict[Hashable, DispatchEntry] = {}
    kernel = chain_map(tree.chains())
    for picks, additions in scenario.steps:
        # Removals pick among the keys present (plus one that never is).
        present = sorted(model, key=repr)
        removals: list[Hashable] = [present[pick % len(present)] for pick in picks if present]
        removals.append("absent")
        changes = tree.update(removals, additions)
        touched = [model[key] for key in removals if key in model] + additions
        for key in removals:
            model.pop(key, None)
        for entry in additions:
            model[entry.key] = entry

        written = {chain.name for chain in changes.written}
        assert not written & changes.deleted
        for chain in changes.written:
            assert kernel.get(chain.name) != chain.rules, f"{chain.name} written unchanged"
        kernel = apply_changes(kernel, changes)
        assert kernel == chain_map(tree.chains())
        assert len(tree) == len(model)
        check_structure(tree, kernel)
        # Every step probes what changed and a sample of the rest; the end probes everything.
        sample = list(model.values())[:: max(1, len(model) // 8)]
        probes = [packet_for(entry, scenario.family) for entry in touched + sample]
        check_semantics(tree, kernel, model.values(), probes + scenario.extra_probes)
    probes = [packet_for(entry, scenario.family) for entry in model.values()]
    check_semantics(tree, kernel, model.values(), probes)

    # The canonical structure is the same whatever the history and the order of arrival.
    kernel = apply_changes(kernel, tree.rebuild())
    shuffled = list(model.values())
    random.Random(len(shuffled)).shuffle(shuffled)
    fresh = DispatchTree(ROOT, scenario.family, by=scenario.by, leaf_size=scenario.leaf_size)
    fresh.update([], shuffled)
    assert kernel == chain_map(tree.chains()) == chain_map(fresh.chains())
    assert tree.chains() == fresh.chains()


@settings(max_examples=60, deadline=None)
@given(st.lists(entries(IPFamily.IPV4, "destination"), max_size=60), st.sampled_from([2, 4, 32]))
def test_full_build_is_independent_of_arrival_order(
    batch: list[DispatchEntry], leaf_size: int
) -> None:
    unique = list({entry.key: entry for entry in batch}.values())
    forward = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=leaf_size)
    backward = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=leaf_size)
    forward.update([], unique)
    backward.update([], list(reversed(unique)))
    assert forward.chains() == backward.chains()


# -- examples --------------------------------------------------------------------------------


def cluster_ip_entries(count: int, ports: tuple[int, ...] = (80,)) -> list[DispatchEntry]:
    rng = random.Random(count)
    numbers = rng.sample(range(IPV4_BASE, IPV4_BASE + 2**20), count)
    return [
        make_entry(
            index * len(ports) + offset, str(ipaddress.ip_address(number)), Protocol.TCP, port
        )
        for index, number in enumerate(numbers)
        for offset, port in enumerate(ports)
    ]


def test_few_entries_stay_in_the_root_like_kube_proxy() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination")
    dns_udp = make_entry(1, "10.96.0.10", Protocol.UDP, 53)
    dns_tcp = make_entry(2, "10.96.0.10", Protocol.TCP, 53)
    api = make_entry(3, "10.96.0.1", Protocol.TCP, 443)

    changes = tree.update([], [dns_udp, dns_tcp, api])

    expected = Chain(ROOT, (api.rule, dns_tcp.rule, dns_udp.rule))
    assert tree.chains() == [expected]
    assert changes == DispatchChanges((expected,), frozenset())
    assert len(tree) == 3
    assert tree.path("10.96.0.10", Protocol.UDP, 53).rules == 3
    assert tree.path("10.96.0.10", Protocol.UDP, 53).chains == (ROOT,)


def test_large_roots_jump_on_address_prefixes() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=4)
    batch = [make_entry(i, f"10.96.0.{i * 8}", Protocol.TCP, 80) for i in range(20)]
    tree.update([], batch)

    root = tree.chains()[0]
    assert len(root.rules) > 1
    for rule in root.rules:
        assert re.fullmatch(r"-d 10\.96\.0\.\d+/\d+ -j KPROXY-D-[0-9A-F]{16}", rule), rule
    for entry in batch:
        path = tree.path(entry.destination, Protocol.TCP, 80)
        assert path.entry == entry
        assert len(path.chains) >= 2
        # Never more than one chain's worth of buckets plus one leaf per level.
        assert path.rules <= 4 * len(path.chains) + 4


def test_ipv6_buckets_use_ipv6_prefixes() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV6, by="destination", leaf_size=4)
    batch = [make_entry(i, f"fd00:10:96::{i * 16:x}", Protocol.TCP, 443) for i in range(1, 30)]
    tree.update([], batch)

    for rule in tree.chains()[0].rules:
        match = re.fullmatch(r"-d (fd00:10:96::[0-9a-f]*)/(\d+) -j KPROXY-D-[0-9A-F]{16}", rule)
        assert match, rule
        assert 112 <= int(match.group(2)) < 128
    assert all(tree.path(e.destination, Protocol.TCP, 443).entry == e for e in batch)


def test_node_ports_split_by_protocol_and_port_range() -> None:
    tree = DispatchTree("KPROXY-NODEPORTS", IPFamily.IPV4, by="port", leaf_size=8)
    batch = [make_entry(i, None, Protocol.TCP, 30000 + i * 7) for i in range(60)]
    batch += [make_entry(100 + i, None, Protocol.UDP, 31000 + i) for i in range(3)]
    tree.update([], batch)

    rules = [rule for chain in tree.chains() for rule in chain.rules if "KPROXY-P-" in rule]
    assert rules
    for rule in rules:
        assert re.fullmatch(
            r"-p (tcp|udp)( -m \1 --dport \d+(:\d+)?)? -j KPROXY-P-[0-9A-F]{16}", rule
        ), rule
    assert any(rule.startswith("-p udp") for rule in tree.chains()[0].rules)
    for entry in batch:
        assert tree.path(None, entry.protocol, entry.port).entry == entry


def test_entries_without_destination_come_after_every_bucket() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=2)
    node_ports = DispatchEntry(
        "nodeports",
        None,
        Protocol.TCP,
        0,
        '-m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL '
        "-j KPROXY-NODEPORTS",
    )
    batch = [make_entry(i, f"10.96.{i}.1", Protocol.TCP, 80) for i in range(6)]
    tree.update([], [node_ports, *batch])

    root = tree.chains()[0].rules
    assert root[-1] == node_ports.rule
    assert all("KPROXY-D-" in rule for rule in root[:-1])
    assert tree.entries()[-1] == node_ports


def test_threshold_flapping_does_not_resplit() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=4)
    batch = [make_entry(i, f"10.96.0.{i}", Protocol.TCP, 80) for i in range(1, 5)]
    # Shares its address, hence its leaf, with entry 1: flapping never empties a bucket.
    batch.append(make_entry(5, "10.96.0.1", Protocol.TCP, 8080))
    tree.update([], batch[:4])
    split = tree.update([], [batch[4]])
    assert len(tree.chains()) > 1
    assert split.written[0].name == ROOT
    structure = [chain.name for chain in tree.chains()]

    for _ in range(3):
        below = tree.update([5], [])
        above = tree.update([], [batch[4]])
        assert not below.deleted and not above.deleted
        assert [chain.name for chain in tree.chains()] == structure
        assert ROOT not in {chain.name for chain in below.written + above.written}


def test_shrinking_subtree_collapses_into_the_root() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=4)
    batch = [make_entry(i, f"10.96.{i}.1", Protocol.TCP, 80) for i in range(12)]
    tree.update([], batch)
    buckets = {chain.name for chain in tree.chains()} - {ROOT}
    assert buckets

    remaining: set[str] = set(buckets)
    for key in range(10):
        changes = tree.update([key], [])
        remaining -= changes.deleted
    assert remaining == set()
    assert tree.chains() == [Chain(ROOT, (batch[10].rule, batch[11].rule))]


def test_one_change_in_a_large_tree_rewrites_one_leaf() -> None:
    batch = cluster_ip_entries(10_000)
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination")
    tree.update([], batch)
    depth = max(len(tree.path(e.destination, Protocol.TCP, 80).chains) for e in batch[:500])

    target = batch[1234]
    changed = make_entry(1234, target.destination, Protocol.TCP, 80, variant=1)
    changes = tree.update([], [changed])
    assert changes.deleted == frozenset()
    assert [chain.name for chain in changes.written] == [
        tree.path(target.destination, Protocol.TCP, 80).chains[-1]
    ]

    added = tree.update([], [make_entry(50_000, "10.96.7.7", Protocol.TCP, 8080)])
    assert 1 <= len(added.written) <= depth + 1
    removed = tree.update([50_000], [])
    assert len(removed.written) + len(removed.deleted) <= depth + 1
    assert len(tree) == 10_000


def test_repeated_or_unknown_changes_are_no_ops() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination")
    batch = cluster_ip_entries(100)
    tree.update([], batch)
    assert tree.update(["no such key"], []).empty
    assert tree.update([], batch[:10]).empty
    assert tree.update([3], [batch[3]]).empty  # removed and re-added: nothing changed


def test_same_address_beyond_leaf_size_stays_in_one_ordered_leaf() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=4)
    batch = [make_entry(i, "10.96.0.5", Protocol.TCP, 1000 - i) for i in range(10)]
    batch.append(make_entry(99, "10.200.0.1", Protocol.TCP, 80))
    tree.update([], batch[:2])
    for entry in batch[2:]:
        tree.update([], [entry])
    leaf = tree.path("10.96.0.5", Protocol.TCP, 991)
    shared = next(chain for chain in tree.chains() if chain.name == leaf.chains[-1])
    assert shared.rules == tuple(entry.rule for entry in sorted(batch[:10], key=lambda e: e.port))


def test_invalid_entries_are_rejected_before_anything_changes() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination")
    good = make_entry(1, "10.96.0.1", Protocol.TCP, 80)
    tree.update([], [good])
    before = tree.chains()
    for bad in (
        make_entry(2, "fd00::1", Protocol.TCP, 80),
        make_entry(3, "10.96.0.0/24", Protocol.TCP, 80),
        make_entry(4, "10.96.0.1", Protocol.TCP, 70000),
    ):
        with pytest.raises(ValueError):
            tree.update([1], [make_entry(5, "10.96.0.2", Protocol.TCP, 80), bad])
        assert tree.chains() == before and len(tree) == 1


def test_bad_names_are_rejected() -> None:
    with pytest.raises(ValueError):
        DispatchTree("KUBE-SERVICES", IPFamily.IPV4, by="destination")
    with pytest.raises(ValueError):
        DispatchTree(ROOT, IPFamily.IPV4, by="destination", chain_prefix="KPROXY-TOOLONG-")
    with pytest.raises(ValueError):
        DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=0)


def test_bucket_names_depend_on_root_and_prefix_only() -> None:
    batch = cluster_ip_entries(200)
    services = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=8)
    external = DispatchTree("KPROXY-EXTERNAL", IPFamily.IPV4, by="destination", leaf_size=8)
    services.update([], batch)
    external.update([], batch)
    service_names = {chain.name for chain in services.chains()}
    external_names = {chain.name for chain in external.chains()}
    assert not service_names & external_names
    for chain in services.chains()[1:]:
        assert re.fullmatch(r"KPROXY-D-[0-9A-F]{16}", chain.name)
    bucket = services.chains()[0].rules[0]
    match_text, _, name = bucket.partition(" -j ")
    assert name == hex_chain_name("KPROXY-D-", f"{ROOT} {match_text}")


def test_hashed_names_follow_kube_proxy() -> None:
    # kube-proxy names default/kubernetes:https's chain KUBE-SVC-NPX46M4PTMTKRN6Y.
    assert hashed_chain_name("KPROXY-SVC-", "default/kubernetes:https", "tcp") == (
        "KPROXY-SVC-NPX46M4PTMTKRN6Y"
    )
    assert name_hash("default/kubernetes:https", "tcp") == "NPX46M4PTMTKRN6Y"
    assert len(hashed_chain_name("KPROXY-XLB-1", "x")) == MAX_CHAIN_NAME
    for prefix in ("KUBE-SVC-", "KPROXY-TOOLONG-"):
        with pytest.raises(ValueError):
            hashed_chain_name(prefix, "x")


def test_path_counts_every_rule_on_a_miss() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination")
    batch = [make_entry(i, f"10.96.0.{i}", Protocol.TCP, 80) for i in range(1, 4)]
    tree.update([], batch)
    miss = tree.path("10.96.0.2", Protocol.UDP, 80)
    assert miss.entry is None
    assert miss.rules == 3
    with pytest.raises(ValueError):
        tree.path(None, Protocol.TCP, 80)


def test_a_chain_crowded_by_far_entries_is_rebuilt() -> None:
    tree = DispatchTree(ROOT, IPFamily.IPV4, by="destination", leaf_size=4)
    dense = [make_entry(i, f"10.96.0.{i}", Protocol.TCP, 80) for i in range(1, 7)]
    tree.update([], dense)
    outliers = [make_entry(100 + i, f"{i + 1}.0.0.1", Protocol.TCP, 80) for i in range(40)]
    largest = 0
    rebuilt = False
    for entry in outliers:
        changes = tree.update([], [entry])
        rebuilt = rebuilt or bool(changes.deleted)
        largest = max(largest, len(tree.chains()[0].rules))
    # Buckets at the root's split length, one per far address, would make 40 root rules.
    assert rebuilt
    assert largest <= 2 * 4
    for entry in dense + outliers:
        assert tree.path(entry.destination, Protocol.TCP, 80).entry == entry
