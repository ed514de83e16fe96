"""parse_node: v1 Node -> NodeInfo."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.model.node import parse_node
from kproxy.model.types import NodeInfo, Parsed


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
        ({"spec__podCIDRs": ["10.244.1.0/24", "bogus"]}, "spec.podCIDRs[1]"),
        ({"spec__podCIDRs": None, "spec__podCIDR": "bogus"}, "spec.podCIDR"),
        ({"spec__podCIDRs": "10.244.1.0/24"}, "spec.podCIDRs"),
        ({"status__addresses": [{"type": "InternalIP", "address": "300.1.1.1"}]},
         "status.addresses[0].address"),
        ({"status__addresses": [{"type": "InternalIP"}]}, "status.addresses[0]"),
        ({"status__addresses": ["192.168.1.10"]}, "status.addresses[0]"),
        ({"status__addresses": {}}, "status.addresses"),
        ({"spec__taints": [{"effect": "NoSchedule"}]}, "spec.taints[0]"),
        ({"spec__taints": "NoSchedule"}, "spec.taints"),
    ],
)
def test_bad_parts_of_a_node_are_dropped_alone(overrides: dict[str, Any], field: str) -> None:
    parsed = parse_node(node(**overrides))
    assert parsed.value is not None and parsed.value.name == "node-a"
    assert fields(parsed) == [(field, False)]
    assert all(r.kind == "Node" and r.name == "node-a" for r in parsed.rejections)


def test_non_string_labels_are_dropped_alone() -> None:
    obj = node()
    obj["metadata"]["labels"] = {"a": "1", "b": 2}
    parsed = parse_node(obj)
    assert parsed.value is not None and parsed.value.labels == (("a", "1"),)
    assert fields(parsed) == [("metadata.labels['b']", False)]


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
