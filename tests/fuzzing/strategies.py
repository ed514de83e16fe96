"""Hypothesis strategies for API objects: valid, near-valid (exactly one field wrong in a way
the API server rejects) and garbage (arbitrary JSON that is never a valid object).

Valid objects use names from their own pools (``svc-N``, ``svc-N-K`` for slices), near-valid
and garbage objects names of their own (``bad-N``, ``junk-N`` or invalid ones), so that the
rules of the valid objects are well defined whatever else is fed beside them. The one
exception is :func:`invalid_updates`: a broken copy of a valid object under its own name, which
must leave the valid version in force.

Garbage reaches the JSON text level too (:func:`json_text`): keys repeated within one object
(the last one wins, as in Go's and Python's JSON decoders and in YAML loaders).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

from hypothesis import strategies as st

Json = Any

NAMESPACES = ("default", "team-a")
NODE_NAME = "node-a"
NODE_IP = "192.168.0.5"
PORT_NAMES = ("http", "dns", "metrics", "grpc-web")
PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# --- addresses ---------------------------------------------------------------------------

ipv4s = st.builds(IPv4Address, st.integers(min_value=2**24, max_value=2**32 - 2)).filter(
    lambda ip: not (ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local)
).map(str)
ipv6s = st.builds(IPv6Address, st.integers(min_value=1, max_value=2**128 - 1)).filter(
    lambda ip: ip.ipv4_mapped is None and not (ip.is_multicast or ip.is_loopback
                                                or ip.is_link_local or ip.is_unspecified)
).map(str)
FAMILY_IPS = {"IPv4": ipv4s, "IPv6": ipv6s}
cidrs4 = st.tuples(ipv4s, st.integers(min_value=8, max_value=32)).map(
    lambda pair: f"{pair[0]}/{pair[1]}")
cidrs6 = st.tuples(ipv6s, st.integers(min_value=16, max_value=128)).map(
    lambda pair: f"{pair[0]}/{pair[1]}")
port_numbers = st.integers(min_value=1, max_value=65535)
node_ports = st.integers(min_value=30000, max_value=32767)


def _strict_cidr(text: str) -> str:
    """The network of ``text`` (host bits cleared), as the API server wants it."""
    return str(ip_network(text, strict=False))


source_ranges = (cidrs4 | cidrs6).map(_strict_cidr)

# --- valid objects -----------------------------------------------------------------------


@st.composite
def valid_service(draw: st.DrawFn, name: str, namespace: str) -> dict[str, Any]:
    """One valid Service of any type, single- or dual-stack, with every optional feature."""
    service_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    families = draw(st.sampled_from([["IPv4"], ["IPv6"], ["IPv4", "IPv6"], ["IPv6", "IPv4"]]))
    cluster_ips = [draw(FAMILY_IPS[family]) for family in families]
    names = draw(st.lists(st.sampled_from(PORT_NAMES), min_size=1, max_size=3, unique=True))
    # The API server refuses two ports with the same port and protocol, or node port and
    # protocol, in one Service.
    numbers = draw(st.lists(port_numbers, min_size=len(names), max_size=len(names), unique=True))
    node_port_numbers = draw(st.lists(node_ports, min_size=len(names), max_size=len(names),
                                      unique=True))
    ports: list[dict[str, Any]] = []
    for port_name, number, node_port in zip(names, numbers, node_port_numbers, strict=True):
        port: dict[str, Any] = {"name": port_name, "protocol": draw(st.sampled_from(PROTOCOLS)),
                                "port": number, "targetPort": draw(port_numbers)}
        if service_type != "ClusterIP":
            port["nodePort"] = node_port
        ports.append(port)
    spec: dict[str, Any] = {
        "type": service_type, "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips,
        "ipFamilies": families,
        "ipFamilyPolicy": "SingleStack" if len(families) == 1 else "RequireDualStack",
        "ports": ports,
        "internalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"])),
    }
    external_ips = draw(st.lists(ipv4s | ipv6s, max_size=2, unique=True))
    if external_ips:
        spec["externalIPs"] = external_ips
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {
            "clientIP": {"timeoutSeconds": draw(st.integers(min_value=1, max_value=86400))}}
    status: dict[str, Any] = {}
    if service_type != "ClusterIP" or external_ips:
        spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    if service_type == "LoadBalancer":
        if spec["externalTrafficPolicy"] == "Local":
            spec["healthCheckNodePort"] = draw(node_ports)
        ranges = draw(st.lists(source_ranges, max_size=3, unique=True))
        if draw(st.booleans()):
            ranges.append(f"{NODE_IP}/32")  # the node itself may reach the load balancer
        if ranges:
            spec["loadBalancerSourceRanges"] = ranges
        ingress = [{"ip": ip} for ip in draw(st.lists(ipv4s | ipv6s, max_size=2, unique=True))]
        if ingress:
            status = {"loadBalancer": {"ingress": ingress}}
    service: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    if status:
        service["status"] = status
    return service


@st.composite
def valid_slice(draw: st.DrawFn, service: dict[str, Any], name: str) -> dict[str, Any]:
    """A valid EndpointSlice of ``service``: one of its families, some of its port names."""
    spec = service["spec"]
    family = draw(st.sampled_from(spec["ipFamilies"]))
    ports = [{"name": port["name"], "protocol": port["protocol"], "port": draw(port_numbers)}
             for port in spec["ports"] if draw(st.booleans()) or len(spec["ports"]) == 1]
    endpoints: list[dict[str, Any]] = []
    for address in draw(st.lists(FAMILY_IPS[family], max_size=4, unique=True)):
        endpoint: dict[str, Any] = {
            "addresses": [address],
            "conditions": {"ready": draw(st.booleans()), "serving": draw(st.booleans()),
                           "terminating": draw(st.booleans())},
        }
        if draw(st.booleans()):
            endpoint["nodeName"] = draw(st.sampled_from([NODE_NAME, "node-b"]))
        if draw(st.booleans()):
            endpoint["zone"] = draw(st.sampled_from(["zone-a", "zone-b"]))
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": service["metadata"]["namespace"],
                     "labels": {SERVICE_NAME_LABEL: service["metadata"]["name"]}},
        "addressType": family,
        "ports": ports,
        "endpoints": endpoints,
    }


def valid_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {"topology.kubernetes.io/zone": "zone-a",
                                                    "kubernetes.io/hostname": NODE_NAME}},
        "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:244:1::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP},
                                 {"type": "InternalIP", "address": "fd00::5"},
                                 {"type": "Hostname", "address": NODE_NAME}]},
    }


@dataclass(frozen=True)
class Cluster:
    """Valid Services and their EndpointSlices, all with distinct names."""

    services: list[dict[str, Any]]
    slices: list[dict[str, Any]]


@st.composite
def valid_clusters(draw: st.DrawFn, max_services: int = 4) -> Cluster:
    count = draw(st.integers(min_value=1, max_value=max_services))
    services = [draw(valid_service(f"svc-{index}", draw(st.sampled_from(NAMESPACES))))
                for index in range(count)]
    slices = [draw(valid_slice(service, f"{service['metadata']['name']}-{k}"))
              for service in services
              for k in range(draw(st.integers(min_value=0, max_value=2)))]
    return Cluster(services, slices)


# --- values the API server rejects ---------------------------------------------------------

# Bad DNS names: uppercase, NUL and other control characters, non-ASCII, too long, and
# shapes a label may not have.
_BAD_NAME_PIECES = ("A", "\x00", "\x01", "\x1b", "\n", "\t", " ", "é", "\u202e", "_", ".",
                    "/", '"', "'", "-", "\x7f")
bad_names = st.one_of(
    st.tuples(st.sampled_from(["bad", "x", "svc"]), st.sampled_from(_BAD_NAME_PIECES),
              st.sampled_from(["", "y", "-1"])).map("".join).filter(
        lambda text: text not in ("bad", "x", "svc", "bad-1", "x-1", "svc-1", "bady", "xy",
                                  "svcy") and not text.endswith("-y")
    ),
    st.integers(min_value=64, max_value=300).map(lambda n: "b" * n),
    st.sampled_from(["-bad", "bad-", "Bad", "BAD", "1bad-\x00", "bad\x00name", "b\u00e9d",
                     "bad..x", "bad name", "10.0.0.0/8"]),
)
bad_namespaces = bad_names | st.just("")
# EndpointSlice and node names are DNS-1123 subdomains: up to 253 characters, dots between
# labels allowed, so only those bad names that are not subdomains, and longer ones.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
bad_subdomains = bad_names.filter(
    lambda text: len(text) > 253 or not _SUBDOMAIN.fullmatch(text)
) | st.integers(min_value=254, max_value=300).map(lambda n: "b" * n)
# Service and EndpointSlice port names are DNS-1123 labels (the API server checks Service
# port names so too; IANA_SVC_NAME is its rule for named target ports): "123" and "a--b" pass.
bad_port_names = st.sampled_from([
    "10.0.0.0/8", "HTTP", "-http", "http-", "http\x00", "ht tp", "h\u00e9", "a" * 64,
    "http/tcp", "a.b",
])
bad_ips = st.sampled_from([
    "10.0.0.256", "not-an-ip", "10.0.0.1/24", "1.2.3", "::g", "10.0.0.1\x00", "", " ",
    "fe80::1%eth0", "1.2.3.4.5", "\u0661.2.3.4",
])
bad_cidrs = st.sampled_from(["10.0.0.0/33", "abc", "10.0.0.0/", "/8", "fd00::/129",
                             "10.0.0.0\x00/8", "10.0.0.1-10.0.0.9"])
bad_port_numbers = st.one_of(
    st.sampled_from([0, -1, 65536, 2**31, 2**63, 10**30]),
    port_numbers.map(str),  # numbers as strings
    port_numbers.map(float).map(lambda value: value + 0.5),
    st.sampled_from([True, None, [], {}]).filter(lambda value: value is not None),
)
bad_node_ports = st.one_of(st.sampled_from([-5, 65536, 10**12]), node_ports.map(str))
bad_protocols = st.sampled_from(["tcp", "ICMP", "", "TCP\x00", 6, None]).filter(
    lambda value: value is not None)
bad_timeouts = st.one_of(st.sampled_from([0, -1, 86401, 10**9]),
                         st.integers(min_value=1, max_value=86400).map(str))
bad_label_values = st.sampled_from(["svc 0", "svc\x00", "-svc", "svc-", "s" * 64, "sv/c",
                                    "\u00e9"])
wrong_types = st.sampled_from(["80", 80, 1.5, True, [], {}, [1, "a"], {"x": 1}])


def _set(path: list[str | int], value: Json) -> Any:
    """A mutation that sets ``path`` in an object to ``value``."""
    def apply(obj: Json) -> None:
        node = obj
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return apply


@st.composite
def _service_mutation(draw: st.DrawFn, service: dict[str, Any]) -> Any:
    spec = service["spec"]
    index = draw(st.integers(min_value=0, max_value=len(spec["ports"]) - 1))
    port = ["spec", "ports", index]
    options: list[st.SearchStrategy[Any]] = [
        bad_names.map(lambda v: _set(["metadata", "name"], v)),
        bad_namespaces.map(lambda v: _set(["metadata", "namespace"], v)),
        bad_port_names.map(lambda v: _set([*port, "name"], v)),
        bad_port_numbers.map(lambda v: _set([*port, "port"], v)),
        bad_protocols.map(lambda v: _set([*port, "protocol"], v)),
        bad_ips.map(lambda v: _set(["spec", "clusterIPs", 0], v)),
        st.sampled_from([["spec"], ["spec", "ports"], ["metadata"], ["spec", "clusterIPs"]]
                        ).flatmap(lambda path: st.sampled_from(["x", 1, True]).map(
                            lambda v: _set(path, v))),
        bad_ips.map(lambda v: _set(["spec", "externalIPs"], [v])),
    ]
    if "nodePort" in spec["ports"][index]:
        options.append(bad_node_ports.map(lambda v: _set([*port, "nodePort"], v)))
    if "sessionAffinityConfig" in spec:
        options.append(bad_timeouts.map(
            lambda v: _set(["spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"], v)))
    if "healthCheckNodePort" in spec:
        options.append(bad_node_ports.map(lambda v: _set(["spec", "healthCheckNodePort"], v)))
    if spec["type"] == "LoadBalancer":
        options.append(bad_cidrs.map(lambda v: _set(["spec", "loadBalancerSourceRanges"], [v])))
        options.append(bad_ips.filter(bool).map(
            lambda v: _set(["status"], {"loadBalancer": {"ingress": [{"ip": v}]}})))
    return draw(st.one_of(options))


@st.composite
def _slice_mutation(draw: st.DrawFn, endpoint_slice: dict[str, Any]) -> Any:
    options: list[st.SearchStrategy[Any]] = [
        bad_subdomains.map(lambda v: _set(["metadata", "name"], v)),
        bad_namespaces.map(lambda v: _set(["metadata", "namespace"], v)),
        bad_label_values.map(lambda v: _set(["metadata", "labels", SERVICE_NAME_LABEL], v)),
        st.sampled_from(["IPv5", "ipv4", "", 4]).map(lambda v: _set(["addressType"], v)),
        st.sampled_from([["ports"], ["endpoints"], ["metadata", "labels"]]).flatmap(
            lambda path: st.sampled_from(["x", 1, True]).map(lambda v: _set(path, v))),
        # More endpoints than the API allows in one slice (1000).
        st.just(_set(["endpoints"], [{"addresses": [f"10.1.{i // 250}.{i % 250 + 1}"]}
                                     for i in range(1001)])),
    ]
    if endpoint_slice["ports"]:
        port = ["ports", draw(st.integers(min_value=0,
                                          max_value=len(endpoint_slice["ports"]) - 1))]
        options += [
            bad_port_names.map(lambda v: _set([*port, "name"], v)),
            bad_port_numbers.map(lambda v: _set([*port, "port"], v)),
            bad_protocols.map(lambda v: _set([*port, "protocol"], v)),
        ]
    if endpoint_slice["endpoints"]:
        endpoint = ["endpoints", draw(st.integers(
            min_value=0, max_value=len(endpoint_slice["endpoints"]) - 1))]
        options += [
            bad_ips.map(lambda v: _set([*endpoint, "addresses", 0], v)),
            st.sampled_from(["true", 1, "yes"]).map(
                lambda v: _set([*endpoint, "conditions", "ready"], v)),
            bad_subdomains.map(lambda v: _set([*endpoint, "nodeName"], v)),
            # The API server does not check an endpoint's zone, but its hints' zone names.
            bad_label_values.map(lambda v: _set([*endpoint, "hints"],
                                                {"forZones": [{"name": v}]})),
        ]
    return draw(st.one_of(options))


def _mutated(obj: dict[str, Any], mutation: Any) -> dict[str, Any]:
    broken = copy.deepcopy(obj)
    mutation(broken)
    return broken


@st.composite
def near_valid_objects(draw: st.DrawFn, cluster: Cluster, index: int) -> dict[str, Any]:
    """A valid object under a name of its own (``bad-<index>``) with one field made invalid.

    Its EndpointSlices may point at a valid Service: an invalid slice must add nothing to it.
    """
    if draw(st.booleans()):
        namespace = draw(st.sampled_from(NAMESPACES))
        base = draw(valid_service(f"bad-{index}", namespace))
        return _mutated(base, draw(_service_mutation(base)))
    target = draw(st.sampled_from(cluster.services))
    base = draw(valid_slice(target, f"bad-{index}"))
    return _mutated(base, draw(_slice_mutation(base)))


@st.composite
def invalid_updates(draw: st.DrawFn, cluster: Cluster) -> dict[str, Any]:
    """A valid object of ``cluster`` with one field other than its identity made invalid."""
    objects = cluster.services + cluster.slices
    base = draw(st.sampled_from(objects))
    mutation_of = _service_mutation if base["kind"] == "Service" else _slice_mutation
    while True:
        broken = _mutated(base, draw(mutation_of(base)))
        metadata = broken.get("metadata")
        if (isinstance(metadata, dict) and metadata.get("name") == base["metadata"]["name"]
                and metadata.get("namespace") == base["metadata"]["namespace"]):
            return broken


# --- garbage -------------------------------------------------------------------------------

KEYS = ["metadata", "spec", "status", "name", "namespace", "labels", "ports", "port",
        "protocol", "targetPort", "nodePort", "clusterIP", "clusterIPs", "type", "externalIPs",
        "loadBalancer", "ingress", "ip", "addressType", "endpoints", "addresses", "conditions",
        "ready", "nodeName", "zone", "hints", SERVICE_NAME_LABEL]
MEANINGFUL = ["TCP", "UDP", "SCTP", "ClusterIP", "NodePort", "LoadBalancer", "Local", "IPv4",
              "IPv6", "10.0.0.1", "fd00::1", "10.0.0.0/8", "default", "svc-0", "80", "30080"]


def _scalars(max_text: int) -> st.SearchStrategy[Json]:
    return st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=16),  # any code point: NUL, controls, non-ASCII
        st.sampled_from(MEANINGFUL),
        st.integers(min_value=1, max_value=max_text).map(lambda n: "x\x00é" * (n // 3)),
    )


def json_values(max_text: int = 3000, max_list: int = 2000) -> st.SearchStrategy[Json]:
    """Arbitrary JSON: wrong types, nesting, big strings and lists, any characters."""
    nested = st.recursive(
        _scalars(max_text),
        lambda children: st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6),
        max_leaves=30,
    )
    deep = st.integers(min_value=10, max_value=80).map(_nested_list)
    huge_list = st.integers(min_value=min(100, max_list), max_value=max_list).map(
        lambda n: list(range(n)))
    return st.one_of(nested, deep, huge_list)


def _nested_list(depth: int) -> Json:
    value: Json = "bottom"
    for _ in range(depth):
        value = {"spec": [value]}
    return value


@st.composite
def garbage_objects(draw: st.DrawFn, index: int, kind: str, max_text: int = 3000,
                    max_list: int = 2000) -> Json:
    """Arbitrary JSON sent as a ``kind`` object, never valid: if it is an object at all, its
    metadata is unusable (wrong type, or a name or namespace the API server rejects)."""
    values = json_values(max_text, max_list)
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        return draw(values.filter(lambda value: not isinstance(value, dict)))
    body = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
    poison = draw(st.sampled_from(["metadata", "name", "namespace"]))
    if poison == "metadata":
        metadata: Json = draw(values.filter(lambda value: not isinstance(value, dict)))
    else:
        metadata = {"name": f"junk-{index}", "namespace": draw(st.sampled_from(NAMESPACES))}
        if poison == "name":
            metadata["name"] = draw(bad_names | wrong_types)
        else:
            metadata["namespace"] = draw(bad_namespaces | wrong_types)
        metadata.update(draw(st.dictionaries(st.sampled_from(["labels", "annotations"]), values,
                                             max_size=2)))
    body["metadata"] = metadata
    body["apiVersion"], body["kind"] = (
        ("v1", kind) if kind == "Service" else ("discovery.k8s.io/v1", kind))
    return body


# --- JSON text ---------------------------------------------------------------------------------


def json_text(value: Json, decoys: list[Json] | None = None) -> str:
    """``value`` as JSON text; with ``decoys``, objects repeat their first keys, the decoy
    first and the real value last (the one every decoder keeps)."""
    if not decoys:
        return json.dumps(value)
    pending = list(decoys)

    def render(node: Json) -> str:
        if isinstance(node, dict):
            parts = []
            for key, item in node.items():
                if pending:
                    parts.append(f"{json.dumps(key)}: {render(pending.pop())}")
                parts.append(f"{json.dumps(key)}: {render(item)}")
            return "{" + ", ".join(parts) + "}"
        if isinstance(node, list):
            return "[" + ", ".join(render(item) for item in node) + "]"
        return json.dumps(node)

    return render(value)
