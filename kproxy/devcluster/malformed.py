"""Malformed Services and EndpointSlices for a dev API server run with ``--no-validation``.

Deterministic for a seed, so a soak or a test that fails can be replayed. Each object has a
name of its own (``bad-<n>``, or an invalid name) and is one of: a near-valid object (valid but
for exactly one field the API server would reject: a bad name or namespace, a port name like
``10.0.0.0/8``, a port out of range or given as a string, a bad IP or CIDR, a wrong type), or
garbage (wrong types where objects belong, deep nesting, big lists and strings, NUL and other
control characters, non-ASCII). Every one is storable: its metadata is an object whose name
is a non-empty string (what the dev API server still requires without validation).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from typing import Any

ApiObject = dict[str, Any]

BAD_NAMES = ("Bad", "bad\x00name", "bad\x1bname", "bad\nname", "b\u00e9d", "bad\u202ename",
             "-bad", "bad-", "bad..x", "bad name", "10.0.0.0/8", "b" * 300)
BAD_NAMESPACES = ("", "Default", "team\x00a", "t\u00e9am", "-ns", "n" * 70)
# Port names are DNS-1123 labels to the API server ("123" and "a--b" are valid ones).
BAD_PORT_NAMES = ("10.0.0.0/8", "HTTP", "-http", "http-", "http\x00", "ht tp", "h\u00e9",
                  "a" * 64, "a.b")
BAD_PORTS: tuple[Any, ...] = (0, -1, 65536, 2**40, "80", "8080", 80.5, True, [], {})
BAD_IPS = ("10.0.0.256", "not-an-ip", "10.0.0.1/24", "1.2.3", "::g", "10.0.0.1\x00", " ",
           "fe80::1%eth0", "\u0661.2.3.4")
BAD_CIDRS = ("10.0.0.0/33", "abc", "10.0.0.0/", "fd00::/129", "10.0.0.0\x00/8")
BAD_PROTOCOLS: tuple[Any, ...] = ("tcp", "ICMP", "", "TCP\x00", 6)
WRONG_TYPES: tuple[Any, ...] = ("x", 1, 1.5, True, None, [1, "a"], {"x": [[[{}]]]})

Mutation = Callable[[ApiObject, random.Random], None]


def _service(name: str, rng: random.Random) -> ApiObject:
    """A Service the API server accepts, before its one mutation: node ports only for the
    types that have them, source ranges only for a LoadBalancer."""
    service_type = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
    port: ApiObject = {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}
    spec: ApiObject = {
        "type": service_type,
        "clusterIP": f"10.96.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
        "ports": [port],
        "externalIPs": ["198.51.100.7"],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
    }
    if service_type != "ClusterIP":
        port["nodePort"] = 30000 + rng.randint(0, 2767)
    if service_type == "LoadBalancer":
        spec["loadBalancerSourceRanges"] = ["10.0.0.0/8"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _slice(name: str, service_name: str, rng: random.Random) -> ApiObject:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": [f"10.244.{rng.randint(1, 9)}.{rng.randint(2, 250)}"],
                       "conditions": {"ready": True}, "nodeName": "node1"}],
    }


def _setter(*path: str | int, values: tuple[Any, ...]) -> Mutation:
    def mutate(obj: ApiObject, rng: random.Random) -> None:
        node: Any = obj
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = rng.choice(values)
    return mutate


SERVICE_MUTATIONS: tuple[Mutation, ...] = (
    _setter("metadata", "name", values=BAD_NAMES),
    _setter("metadata", "namespace", values=BAD_NAMESPACES),
    _setter("spec", "ports", 0, "name", values=BAD_PORT_NAMES),
    _setter("spec", "ports", 0, "port", values=BAD_PORTS),
    # nodePort 0 is "none allocated", which the API accepts.
    _setter("spec", "ports", 0, "nodePort", values=tuple(p for p in BAD_PORTS if p != 0)),
    _setter("spec", "ports", 0, "protocol", values=BAD_PROTOCOLS),
    _setter("spec", "clusterIP", values=BAD_IPS),
    _setter("spec", "externalIPs", 0, values=BAD_IPS),
    _setter("spec", "loadBalancerSourceRanges", values=tuple([cidr] for cidr in BAD_CIDRS)),
    _setter("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds",
            values=(0, 86401, "600", -1)),
    _setter("spec", values=WRONG_TYPES),
    _setter("spec", "ports", values=WRONG_TYPES),
)
SLICE_MUTATIONS: tuple[Mutation, ...] = (
    _setter("metadata", "name", values=BAD_NAMES),
    _setter("metadata", "namespace", values=BAD_NAMESPACES),
    _setter("metadata", "labels", "kubernetes.io/service-name",
            values=("svc 0", "svc\x00", "-svc", "s" * 64)),
    _setter("addressType", values=("IPv5", "", 4)),
    _setter("ports", 0, "name", values=BAD_PORT_NAMES),
    _setter("ports", 0, "port", values=BAD_PORTS),
    _setter("ports", 0, "protocol", values=BAD_PROTOCOLS),
    _setter("endpoints", 0, "addresses", 0, values=BAD_IPS),
    _setter("endpoints", 0, "conditions", "ready", values=("true", 1)),
    _setter("endpoints", 0, "nodeName", values=BAD_NAMES),
    # A null endpoints list is an empty one to the API.
    _setter("endpoints", values=tuple(v for v in WRONG_TYPES if v is not None)),
)


def _garbage_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return rng.choice(WRONG_TYPES)
    if choice == 1:
        return "".join(chr(rng.choice([0, 1, 7, 27, 127, 0xE9, 0x202E, 0x1F600, 65]))
                       for _ in range(rng.randint(1, 40)))
    if choice == 2:
        return "x\x00\u00e9" * rng.randint(1, 3_000)
    if choice == 3:
        return rng.randint(-(2**70), 2**70)
    if choice == 4:
        return list(range(rng.randint(100, 2_000)))
    if choice == 5:
        nested: Any = "bottom"
        for _ in range(rng.randint(10, 100)):
            nested = {"spec": [nested]}
        return nested
    if choice == 6:
        return [_garbage_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ("spec", "ports", "port", "clusterIP", "endpoints", "addresses", "labels", "\x00")
    return {rng.choice(keys): _garbage_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _garbage(name: str, kind: str, rng: random.Random) -> ApiObject:
    body: ApiObject = {key: _garbage_value(rng) for key in
                       rng.sample(["spec", "status", "ports", "endpoints", "addressType"], 3)}
    metadata: ApiObject = {"name": name, "namespace": rng.choice(("default", *BAD_NAMESPACES))}
    if rng.random() < 0.5:
        metadata["labels"] = _garbage_value(rng)
    body["metadata"] = metadata
    body["apiVersion"] = "v1" if kind == "Service" else "discovery.k8s.io/v1"
    body["kind"] = kind
    return body


def malformed_objects(count: int, *, seed: int = 0, service_names: tuple[str, ...] = ("web",)
                      ) -> Iterator[ApiObject]:
    """``count`` malformed objects, Services and EndpointSlices mixed. Near-valid slices point
    at ``service_names`` (valid Services must gain nothing from them)."""
    rng = random.Random(seed)
    for index in range(count):
        name = f"bad-{index}"
        roll = rng.random()
        if roll < 0.35:
            obj = _service(name, rng)
            rng.choice(SERVICE_MUTATIONS)(obj, rng)
        elif roll < 0.7:
            obj = _slice(name, rng.choice(service_names), rng)
            rng.choice(SLICE_MUTATIONS)(obj, rng)
        else:
            obj = _garbage(name, rng.choice(("Service", "EndpointSlice")), rng)
        yield copy.deepcopy(obj)
