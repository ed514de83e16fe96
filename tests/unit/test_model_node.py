"""parse_node: v1 Node -> NodeInfo."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.model.node import parse_node
from kproxy.model.types import NodeInfo, Parsed, RejectReason


def node(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "node-a",
            "labels": {"topology.kubernetes.io/zone": "zone-1", "kubernetes.io/os": "linux"},
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
            "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.168.1.10"},
                {"type": "InternalIP", "address": "FD00::10"},
                {"type": "Hostname", "address": "node-a"},
            ]
        },
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        obj[section][field] = value
    return obj


def fields(parsed: Parsed[Any]) -> list[tuple[str, bool]]:
    return [(r.field, r.whole_object) for r in parsed.rejections]


def test_node_record_holds_what_the_proxy_needs() -> None:
    parsed = parse_node(node())
    assert parsed.rejections == ()
    assert parsed.value == NodeInfo(
        name="node-a",
        labels=(("kubernetes.io/os", "linux"), ("topology.kubernetes.io/zone", "zone-1")),
        pod_cidrs=("10.244.1.0/24", "fd00:10:244:1::/64"),
        addresses=(("InternalIP", "192.168.1.10"), ("InternalIP", "fd00::10"),
                   ("Hostname", "node-a")),
        being_deleted=False,
        taints=(("node.kubernetes.io/unschedulable", "NoSchedule"),),
    )
    assert parsed.value.zone == "zone-1"


def test_legacy_pod_cidr_is_used_without_pod_cidrs() -> None:
    parsed = parse_node(node(spec__podCIDRs=None, spec__podCIDR="10.244.2.7/24"))
    assert parsed.value is not None
    assert parsed.value.pod_cidrs == ("10.244.2.0/24",)


def test_deletion_timestamp_marks_the_node_as_being_deleted() -> None:
    obj = node()
    obj["metadata"]["deletionTimestamp"] = "2025-01-02T03:04:05Z"
    parsed = parse_node(obj)
    assert parsed.value is not None and parsed.value.being_deleted


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"status__addresses": [{"type": "InternalIP", "address": "300.1.1.1"}]},
         "status.addresses[0].address"),
        ({"status__addresses": [{"type": "InternalIP"}]}, "status.addresses[0]"),
        ({"status__addresses": ["192.168.1.10"]}, "status.addresses[0]"),
        ({"status__addresses": [{"type": "Hostname", "address": "node\x1b[2J"}]},
         "status.addresses[0]"),
    ],
)
def test_bad_addresses_are_dropped_alone_as_kube_proxy_ignores_them(
    overrides: dict[str, Any], field: str
) -> None:
    # The API server does not check status.addresses; kube-proxy skips what it cannot parse.
    parsed = parse_node(node(**overrides))
    assert parsed.value is not None and parsed.value.name == "node-a"
    assert fields(parsed) == [(field, False)]
    assert all(r.kind == "Node" and r.name == "node-a" for r in parsed.rejections)


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"spec__podCIDRs": ["10.244.1.0/24", "bogus"]}, "spec.podCIDRs[1]",
         RejectReason.INVALID_CIDR),
        ({"spec__podCIDRs": None, "spec__podCIDR": "bogus"}, "spec.podCIDR",
         RejectReason.INVALID_CIDR),
        ({"spec__podCIDRs": "10.244.1.0/24"}, "spec.podCIDRs", RejectReason.WRONG_TYPE),
        ({"spec__podCIDRs": ["10.244.1.0/24", "10.244.2.0/24"]}, "spec.podCIDRs[1]",
         RejectReason.INCONSISTENT),
        ({"spec__podCIDRs": ["10.244.1.0/24", "fd00::/64", "10.244.2.0/24"]},
         "spec.podCIDRs", RejectReason.TOO_MANY),
        ({"spec__podCIDR": "10.244.9.0/24"}, "spec.podCIDR", RejectReason.INCONSISTENT),
        ({"status__addresses": {}}, "status.addresses", RejectReason.WRONG_TYPE),
        ({"spec__taints": [{"effect": "NoSchedule"}]}, "spec.taints[0].key",
         RejectReason.INVALID_LABEL),
        ({"spec__taints": [{"key": "k", "effect": "Sometimes"}]}, "spec.taints[0].effect",
         RejectReason.UNSUPPORTED_VALUE),
        ({"spec__taints": [{"key": "k", "value": "a b", "effect": "NoSchedule"}]},
         "spec.taints[0].value", RejectReason.INVALID_LABEL),
        ({"spec__taints": "NoSchedule"}, "spec.taints", RejectReason.WRONG_TYPE),
    ],
)
def test_a_node_the_api_server_would_refuse_is_rejected_whole(
    overrides: dict[str, Any], field: str, code: RejectReason
) -> None:
    parsed = parse_node(node(**overrides))
    assert parsed.value is None
    assert [(r.field, r.whole_object, r.code) for r in parsed.rejections] == [(field, True, code)]
    assert all(r.kind == "Node" and r.name == "node-a" for r in parsed.rejections)


@pytest.mark.parametrize(
    ("labels", "field"),
    [({"a": "1", "b": 2}, "metadata.labels[b]"),
     ({"topology.kubernetes.io/zone": "zone 1"}, "metadata.labels[topology.kubernetes.io/zone]"),
     ({"a b": "1"}, "metadata.labels['a b']")],
)
def test_malformed_labels_reject_the_whole_node(labels: dict[str, Any], field: str) -> None:
    obj = node()
    obj["metadata"]["labels"] = labels
    parsed = parse_node(obj)
    assert parsed.value is None
    assert [(r.field, r.code) for r in parsed.rejections] == [
        (field, RejectReason.INVALID_LABEL)
    ]


@pytest.mark.parametrize("name", ["Node-A", "node_a", "node-a.", "n" * 254, "node\x00"])
def test_node_names_are_dns_subdomains(name: str) -> None:
    obj = node()
    obj["metadata"]["name"] = name
    assert [(r.field, r.code) for r in parse_node(obj).rejections] == [
        ("metadata.name", RejectReason.INVALID_NAME)
    ]


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (None, "(object)"),
        ({"metadata": {}}, "metadata.name"),
        ({"metadata": {"name": "node-a"}, "spec": "x"}, "spec"),
        ({"metadata": {"name": "node-a"}, "status": []}, "status"),
    ],
)
def test_unusable_nodes_are_rejected_whole(obj: Any, field: str) -> None:
    parsed = parse_node(obj)
    assert parsed.value is None
    assert fields(parsed) == [(field, True)]


def test_a_minimal_node_has_empty_defaults() -> None:
    parsed = parse_node({"metadata": {"name": "bare"}})
    assert parsed == Parsed(NodeInfo("bare"))
