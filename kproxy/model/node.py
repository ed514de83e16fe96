"""v1 Node objects -> ``NodeInfo`` (kproxy watches only its own node).

Rejected whole: no usable metadata or a spec/status of the wrong shape. Rejected in part:
labels that are not strings, pod CIDRs that do not parse, InternalIP/ExternalIP addresses
that are not IPs, malformed address or taint entries. Hostname-type addresses are kept as
given. Labels are sorted, so that equal nodes give equal records whatever the key order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from kproxy.model.addresses import normalize_cidr, normalize_ip
from kproxy.model.objectmeta import ObjectProblems, describe, is_object, read_metadata
from kproxy.model.types import NodeInfo, Parsed

KIND: Final = "Node"
_IP_ADDRESS_TYPES: Final = frozenset({"InternalIP", "ExternalIP"})
_MAX_LABEL_TEXT: Final = 317  # a 253-character prefix, "/", and a 63-character name


def parse_node(obj: Mapping[str, Any]) -> Parsed[NodeInfo]:
    """Parse one v1 Node; never raises."""
    meta = read_metadata(obj, KIND, namespaced=False)
    if isinstance(meta, Parsed):
        return meta
    problems = ObjectProblems(KIND, "", meta.name)
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    elif not is_object(spec):
        return problems.drop("spec", "not an object")
    status = obj.get("status")
    if status is None:
        status = {}
    elif not is_object(status):
        return problems.drop("status", "not an object")
    return problems.result(
        NodeInfo(
            name=meta.name,
            labels=_labels(meta.labels, problems),
            pod_cidrs=_pod_cidrs(spec, problems),
            addresses=_addresses(status.get("addresses"), problems),
            being_deleted=meta.deletion_requested,
            taints=_taints(spec.get("taints"), problems),
        )
    )


def _labels(labels: Mapping[str, Any], problems: ObjectProblems) -> tuple[tuple[str, str], ...]:
    kept: list[tuple[str, str]] = []
    for key, value in labels.items():
        if (
            type(key) is str
            and type(value) is str
            and len(key) <= _MAX_LABEL_TEXT
            and len(value) <= _MAX_LABEL_TEXT
        ):
            kept.append((key, value))
        else:
            problems.ignore(f"metadata.labels[{describe(key)}]", "not a string label")
    return tuple(sorted(kept))


def _pod_cidrs(spec: Mapping[str, Any], problems: ObjectProblems) -> tuple[str, ...]:
    """spec.podCIDRs (primary first), falling back to the legacy spec.podCIDR."""
    raw = spec.get("podCIDRs")
    path = "spec.podCIDRs"
    if raw is None or raw == []:
        single = spec.get("podCIDR")
        if single is None or single == "":
            return ()
        raw, path = [single], "spec.podCIDR"
    elif not isinstance(raw, list):
        problems.ignore(path, "not a list")
        return ()
    cidrs: dict[str, None] = {}
    for index, value in enumerate(raw):
        cidr = normalize_cidr(value)
        if cidr is None:
            field = path if path == "spec.podCIDR" else f"{path}[{index}]"
            problems.ignore(field, f"not a CIDR: {describe(value)}")
        else:
            cidrs[cidr] = None
    return tuple(cidrs)


def _addresses(raw: object, problems: ObjectProblems) -> tuple[tuple[str, str], ...]:
    """status.addresses as (type, address); IP-typed addresses are normalised."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.ignore("status.addresses", "not a list")
        return ()
    addresses: list[tuple[str, str]] = []
    for index, entry in enumerate(raw):
        path = f"status.addresses[{index}]"
        address_type = entry.get("type") if is_object(entry) else None
        address = entry.get("address") if is_object(entry) else None
        if not _short_text(address_type) or not _short_text(address):
            problems.ignore(path, f"not a typed address: {describe(entry)}")
            continue
        if address_type in _IP_ADDRESS_TYPES:
            ip = normalize_ip(address)
            if ip is None:
                problems.ignore(f"{path}.address", f"not an IP address: {describe(address)}")
                continue
            address = ip
        addresses.append((address_type, address))
    return tuple(addresses)


def _taints(raw: object, problems: ObjectProblems) -> tuple[tuple[str, str], ...]:
    """spec.taints as (key, effect); the effect may be empty, the key may not."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.ignore("spec.taints", "not a list")
        return ()
    taints: list[tuple[str, str]] = []
    for index, entry in enumerate(raw):
        key = entry.get("key") if is_object(entry) else None
        effect = entry.get("effect", "") if is_object(entry) else None
        if _short_text(key) and type(effect) is str and len(effect) <= _MAX_LABEL_TEXT:
            taints.append((key, effect))
        else:
            problems.ignore(f"spec.taints[{index}]", f"not a taint: {describe(entry)}")
    return tuple(taints)


def _short_text(value: object) -> TypeGuard[str]:
    return type(value) is str and 0 < len(value) <= _MAX_LABEL_TEXT
