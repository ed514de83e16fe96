"""Property tests of the object model: bad input never raises, never leaks into good input,
and merging does not depend on how the slices arrive."""

from __future__ import annotations

import copy
from collections.abc import Callable
from ipaddress import IPv6Address
from random import Random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kproxy.model.addresses import (
    clear_caches,
    normalize_cidr_sloppy,
    normalize_ip,
    special_ip_problem,
)
from kproxy.model.endpoints import merge_endpoint_slices
from kproxy.model.endpointslice import parse_endpoint_slice
from kproxy.model.node import parse_node
from kproxy.model.service import parse_service
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Parsed,
    Protocol,
)

Json = Any
Parser = Callable[[Json], Parsed[Any]]

# Strings that mean something somewhere in these objects, so that random objects reach
# deep into the parsers instead of failing at the first field.
MEANINGFUL = [
    "", "None", "TCP", "UDP", "SCTP", "tcp", "Local", "Cluster", "ClientIP", "VIP", "Proxy",
    "ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "IPv4", "IPv6", "FQDN",
    "10.0.0.1", "010.0.0.1", "2001:db8::1", "::ffff:10.0.0.1", "fe80::1%eth0", "10.0.0.0/8",
    "10.0.0.1/33", "default", "web", "kubernetes.io/service-name",
    "service.kubernetes.io/headless", "service.kubernetes.io/service-proxy-name",
    "2025-01-02T03:04:05Z", "x" * 300,
]
KEYS = [
    "metadata", "spec", "status", "name", "namespace", "labels", "annotations", "ports",
    "port", "protocol", "targetPort", "nodePort", "clusterIP", "clusterIPs", "type",
    "externalIPs", "loadBalancer", "ingress", "ip", "ipMode", "addressType", "endpoints",
    "addresses", "conditions", "ready", "serving", "terminating", "hints", "forZones",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(MEANINGFUL)
    | st.just(10**4000)  # near the int -> str limit (describing values must not raise)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)

names = st.sampled_from(["web", "db", "api", "cache", "a-b"])
namespaces = st.sampled_from(["default", "kube-system", "team-a"])
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.builds(IPv6Address, st.integers(min_value=0, max_value=2**128 - 1)).filter(
    lambda ip: ip.ipv4_mapped is None  # an IPv4 address for Go, and so for kube-proxy
).map(str)
port_numbers = st.integers(min_value=1, max_value=65535)
# Addresses an endpoint or external IP may have (not loopback, link-local, unspecified).
endpoint_ipv4s = ipv4s.filter(lambda ip: special_ip_problem(ip) is None)
endpoint_ipv6s = ipv6s.filter(lambda ip: special_ip_problem(str(normalize_ip(ip))) is None)
protocols = st.sampled_from(["TCP", "UDP", "SCTP"])


@st.composite
def valid_services(draw: st.DrawFn) -> dict[str, Any]:
    service_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    families = draw(st.sampled_from([[ipv4s], [ipv6s], [ipv4s, ipv6s], [ipv6s, ipv4s]]))
    cluster_ips = [draw(family) for family in families]
    port_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    # Port numbers and node ports are unique in a valid service (per protocol, at least).
    numbers = draw(st.lists(port_numbers, min_size=len(port_names), max_size=len(port_names),
                            unique=True))
    node_ports = draw(st.lists(st.integers(min_value=30000, max_value=32767),
                               min_size=len(port_names), max_size=len(port_names), unique=True))
    ports = []
    for port_name, number, node_port in zip(port_names, numbers, node_ports, strict=True):
        port: dict[str, Any] = {
            "name": port_name,
            "protocol": draw(protocols),
            "port": number,
            "targetPort": draw(port_numbers | st.sampled_from(["http", "dns"])),
        }
        if service_type != "ClusterIP":
            port["nodePort"] = node_port
        ports.append(port)
    spec: dict[str, Any] = {
        "type": service_type,
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ports": ports,
        "externalIPs": draw(st.lists(endpoint_ipv4s | endpoint_ipv6s, max_size=2)),
        "sessionAffinity": draw(st.sampled_from(["None", "ClientIP"])),
        "internalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"])),
    }
    status: dict[str, Any] = {}
    if service_type != "ClusterIP":
        spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    if service_type == "LoadBalancer":
        if spec["externalTrafficPolicy"] == "Local":
            spec["healthCheckNodePort"] = draw(st.integers(min_value=30000, max_value=32767))
        spec["loadBalancerSourceRanges"] = draw(st.lists(st.sampled_from(
            ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"]), max_size=2))
        status = {"loadBalancer": {"ingress": [{"ip": draw(ipv4s)}]}}
    return {
        "metadata": {"namespace": draw(namespaces), "name": draw(names)},
        "spec": spec,
        "status": status,
    }


@st.composite
def valid_slices(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    addresses = endpoint_ipv4s if family == "IPv4" else endpoint_ipv6s
    endpoints = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        endpoint: dict[str, Any] = {
            "addresses": [draw(addresses)],
            "conditions": {
                "ready": draw(st.booleans()),
                "serving": draw(st.booleans()),
                "terminating": draw(st.booleans()),
            },
        }
        if draw(st.booleans()):
            endpoint["nodeName"] = draw(st.sampled_from(["node-a", "node-b"]))
        endpoints.append(endpoint)
    return {
        "metadata": {
            "namespace": draw(namespaces),
            "name": f"web-{draw(st.integers(min_value=0, max_value=99))}",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": family,
        "ports": [
            {"name": name, "protocol": draw(protocols), "port": draw(port_numbers)}
            for name in draw(st.lists(names, max_size=3, unique=True))
        ],
        "endpoints": endpoints,
    }


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Json]) -> Json:
    """A valid object with one place somewhere inside replaced by a random value (or gone)."""
    obj = copy.deepcopy(draw(base))
    node = obj
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        child = node[draw(st.sampled_from(keys))]
        if not isinstance(child, (dict, list)):
            break
        node = child
    if isinstance(node, dict):
        key = draw(st.sampled_from([*node, *KEYS]))
        if draw(st.booleans()) and key in node:
            del node[key]
        else:
            node[key] = draw(json_values)
    elif node:
        node[draw(st.integers(min_value=0, max_value=len(node) - 1))] = draw(json_values)
    return obj


def _valid_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 253 and value.isprintable()


def check_rejections(kind: str, obj: Json, parsed: Parsed[Any], *, namespaced: bool) -> None:
    whole = [r for r in parsed.rejections if r.whole_object]
    if parsed.value is not None:
        assert not whole
    else:
        assert len(whole) <= 1  # dropped with one reason, or silently ignored
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    for rejection in parsed.rejections:
        assert rejection.kind == kind
        assert rejection.field and rejection.reason
        assert str(rejection) and str(rejection).isprintable()  # one harmless log line
        assert rejection.code.value.islower()
        if _valid_name(metadata.get("name")):
            assert rejection.name == metadata["name"]
        if namespaced and _valid_name(metadata.get("namespace")):
            assert rejection.namespace == metadata["namespace"]
        if not namespaced:
            assert rejection.namespace == ""


PARSERS: list[tuple[str, Parser, bool, st.SearchStrategy[Json]]] = [
    ("Service", parse_service, True, valid_services()),
    ("EndpointSlice", parse_endpoint_slice, True, valid_slices()),
    ("Node", parse_node, False, st.just({"metadata": {"name": "node-a"},
                                          "spec": {"podCIDRs": ["10.244.0.0/24"]}})),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_and_malformed_objects_never_raise_and_rejections_name_their_object(
    data: st.DataObject,
) -> None:
    kind, parser, namespaced, valid = data.draw(st.sampled_from(PARSERS))
    obj = data.draw(json_values | mutated(valid) | mutated(mutated(valid)))
    parsed = parser(obj)
    check_rejections(kind, obj, parsed, namespaced=namespaced)


@given(st.lists(valid_services(), max_size=4), st.lists(valid_slices(), max_size=4))
def test_valid_objects_parse_without_rejections(
    services: list[dict[str, Any]], slices: list[dict[str, Any]]
) -> None:
    for service in services:
        parsed = parse_service(service)
        assert parsed.rejections == () and parsed.value is not None and parsed.value.ports
    for endpoint_slice in slices:
        parsed_slice = parse_endpoint_slice(endpoint_slice)
        assert parsed_slice.rejections == () and parsed_slice.value is not None


@given(
    st.lists(valid_services(), min_size=1, max_size=4),
    st.lists(valid_slices(), min_size=1, max_size=4),
    st.lists(json_values | mutated(valid_services()) | mutated(valid_slices()), max_size=6),
    st.randoms(use_true_random=False),
)
def test_malformed_objects_do_not_change_how_valid_objects_parse(
    services: list[dict[str, Any]],
    slices: list[dict[str, Any]],
    garbage: list[Json],
    random: Random,
) -> None:
    clear_caches()
    alone = [parse_service(s) for s in services] + [parse_endpoint_slice(s) for s in slices]
    clear_caches()
    stream: list[tuple[int | None, Json]] = [(i, s) for i, s in enumerate(services + slices)]
    stream += [(None, g) for g in garbage]
    random.shuffle(stream)
    for index, obj in stream:
        for parser in (parse_service, parse_endpoint_slice):
            result = parser(obj)
            if index is not None and (parser is parse_service) == (index < len(services)):
                assert result == alone[index]


# --- malformed parts of otherwise valid objects -----------------------------------------

bad_ips = st.one_of(st.text(max_size=20), scalars).filter(lambda v: normalize_ip(v) is None)
bad_cidrs = st.one_of(st.text(max_size=20), scalars).filter(
    lambda v: not isinstance(v, str) or normalize_cidr_sloppy(v.strip()) is None
)
bad_service_ports = st.one_of(
    scalars,
    st.fixed_dictionaries({"name": st.just("bad"), "port": st.integers().filter(
        lambda p: not 0 < p < 65536)}),
    st.fixed_dictionaries({"name": st.just("bad"), "port": port_numbers,
                           "protocol": st.sampled_from(["ICMP", "tcp", "", 6])}),
)


def _insert(data: st.DataObject, items: list[Any], value: Any) -> None:
    items.insert(data.draw(st.integers(min_value=0, max_value=len(items))), value)


@given(valid_services(), st.data())
def test_a_malformed_part_of_a_service_rejects_it_whole_with_one_rejection(
    service: dict[str, Any], data: st.DataObject
) -> None:
    original = parse_service(service)
    damaged = copy.deepcopy(service)
    spec, status = damaged["spec"], damaged["status"]
    where = data.draw(st.sampled_from(["port", "externalIP", "sourceRange", "ingress"]))
    if where == "port":
        _insert(data, spec["ports"], data.draw(bad_service_ports))
    elif where == "externalIP":
        _insert(data, spec["externalIPs"], data.draw(bad_ips.filter(lambda v: v is not None)))
    elif where == "sourceRange":
        spec.setdefault("loadBalancerSourceRanges", [])
        _insert(data, spec["loadBalancerSourceRanges"], data.draw(bad_cidrs))
    else:
        ingress = status.setdefault("loadBalancer", {}).setdefault("ingress", [])
        bad_ip = data.draw(bad_ips.filter(lambda v: v not in (None, "")))
        _insert(data, ingress, {"ip": bad_ip})
    parsed = parse_service(damaged)
    assert original.value is not None and original.rejections == ()
    assert parsed.value is None
    assert len(parsed.rejections) == 1 and parsed.rejections[0].whole_object


bad_endpoints = st.one_of(
    scalars,
    st.fixed_dictionaries({"addresses": st.lists(bad_ips, max_size=2)}),
    st.fixed_dictionaries({
        "addresses": st.just(["10.0.0.1"]),
        "conditions": st.fixed_dictionaries({"ready": st.sampled_from(["true", 1, [], {}])}),
    }),
)
# "All ports" entries: the API accepts them, kube-proxy skips them.
ignored_slice_ports = st.one_of(
    st.none(),
    st.fixed_dictionaries({"name": st.just("bad"), "port": st.none() | st.just(0)}),
)
bad_slice_ports = st.one_of(
    scalars.filter(lambda v: v is not None),
    st.fixed_dictionaries({"name": st.just("bad"), "port": port_numbers,
                           "protocol": st.just("ICMP")}),
    st.fixed_dictionaries({"name": st.just("bad"), "port": st.integers().filter(
        lambda p: not 0 <= p < 65536)}),
)


def _damage_one_slice(
    slices: list[dict[str, Any]], data: st.DataObject, key: str, bad: st.SearchStrategy[Any]
) -> tuple[int, list[Parsed[EndpointSliceInfo]]]:
    """Insert a ``bad`` entry into ``key`` of one copied slice; which one, and all parsed."""
    target = data.draw(st.integers(min_value=0, max_value=len(slices) - 1))
    damaged = copy.deepcopy(slices)
    _insert(data, damaged[target][key], data.draw(bad))
    return target, [parse_endpoint_slice(s) for s in damaged]


@given(st.lists(valid_slices(), min_size=1, max_size=3), st.data())
def test_a_malformed_part_of_a_slice_rejects_only_that_slice(
    slices: list[dict[str, Any]], data: st.DataObject
) -> None:
    original = [parse_endpoint_slice(s).value for s in slices]
    if data.draw(st.booleans()):
        target, parsed = _damage_one_slice(slices, data, "endpoints", bad_endpoints)
    else:
        target, parsed = _damage_one_slice(slices, data, "ports", bad_slice_ports)
    assert parsed[target].value is None
    assert [(r.whole_object) for r in parsed[target].rejections] == [True]
    assert [p.value for i, p in enumerate(parsed) if i != target] == [
        v for i, v in enumerate(original) if i != target
    ]


@given(st.lists(valid_slices(), min_size=1, max_size=3), st.data())
def test_an_all_ports_entry_of_a_slice_drops_only_that_port(
    slices: list[dict[str, Any]], data: st.DataObject
) -> None:
    original = [parse_endpoint_slice(s).value for s in slices]
    _, parsed = _damage_one_slice(slices, data, "ports", ignored_slice_ports)
    assert [p.value for p in parsed] == original
    assert sum(len(p.rejections) for p in parsed) >= 1
    assert not any(r.whole_object for p in parsed for r in p.rejections)
    records = [v for v in original if v is not None]
    assert merge_endpoint_slices([p.value for p in parsed if p.value]) == merge_endpoint_slices(
        records
    )


# --- merging ----------------------------------------------------------------------------

pool_ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.10", "10.0.0.3"])
endpoint_records = st.builds(
    Endpoint,
    ip=pool_ips,
    port=st.just(0),
    ready=st.booleans(),
    serving=st.booleans(),
    terminating=st.booleans(),
    node_name=st.none() | st.sampled_from(["node-a", "node-b"]),
    zone=st.none() | st.sampled_from(["z1", "z2"]),
    zone_hints=st.none() | st.frozensets(st.sampled_from(["z1", "z2"]), min_size=1),
    node_hints=st.none() | st.frozensets(st.sampled_from(["node-a"]), min_size=1),
)
slice_ports = st.builds(
    EndpointSlicePort,
    name=st.sampled_from(["", "http"]),
    port=st.sampled_from([80, 8080]),
    protocol=st.sampled_from([Protocol.TCP, Protocol.UDP]),
)
slice_records = st.builds(
    EndpointSliceInfo,
    namespace=st.just("default"),
    name=st.sampled_from(["web-a", "web-b", "web-c"]),
    service_name=st.just("web"),
    address_type=st.just(IPFamily.IPV4),
    ports=st.lists(slice_ports, max_size=3).map(tuple),
    endpoints=st.lists(endpoint_records, max_size=5).map(tuple),
)


@given(st.lists(slice_records, max_size=5), st.randoms(use_true_random=False), st.data())
def test_merge_is_independent_of_slice_order_and_of_repeated_slices(
    slices: list[EndpointSliceInfo], random: Random, data: st.DataObject
) -> None:
    merged = merge_endpoint_slices(slices)
    reordered = list(slices)
    if slices:
        reordered += data.draw(st.lists(st.sampled_from(slices), max_size=3))
    random.shuffle(reordered)
    assert merge_endpoint_slices(reordered) == merged
    assert merge_endpoint_slices(iter(reordered)) == merged  # any iterable, read once


@given(st.lists(slice_records, max_size=5))
def test_merge_keeps_every_ip_port_exactly_once_in_kube_proxy_order(
    slices: list[EndpointSliceInfo],
) -> None:
    merged = merge_endpoint_slices(slices)
    for port_name, endpoints in merged.items():
        addresses = [e.address for e in endpoints]
        assert addresses == sorted(set(addresses))
        expected = {
            f"{e.ip}:{p.port}"
            for s in slices
            for p in s.ports
            if (p.name, p.protocol) == (port_name.port, port_name.protocol)
            for e in s.endpoints
        }
        assert set(addresses) == expected
        for endpoint in endpoints:
            copies = [
                e
                for s in slices
                for p in s.ports
                if (p.name, p.protocol, p.port) == (port_name.port, port_name.protocol,
                                                     endpoint.port)
                for e in s.endpoints
                if e.ip == endpoint.ip
            ]
            if any(not c.terminating for c in copies):
                assert not endpoint.terminating  # kube-proxy: non-terminating copies win
