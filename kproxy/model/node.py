"""v1 Node objects -> ``NodeInfo`` (kproxy watches only its own node).

Validated as the API server validates it, and rejected whole otherwise: the name (a DNS-1123
subdomain), labels, spec and status of the right shape, pod CIDRs (CIDRs, at most one per
family, ``podCIDR`` equal to ``podCIDRs[0]``), taints (qualified-name keys, label-value
values, a known effect). The API does not check ``status.addresses``: an entry that is not
a typed address, or an InternalIP/ExternalIP that is not an IP, is ignored with a
field-level rejection, as kube-proxy ignores it. Hostname-type addresses are kept as
given. Labels are sorted, so that equal nodes give equal records whatever the key order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from kproxy.model.addresses import ip_family, normalize_cidr, normalize_ip
from kproxy.model.formats import is_label_value, is_qualified_name
from kproxy.model.objectmeta import (
    MAX_UNBOUNDED_LIST,
    Invalid,
    ObjectProblems,
    check_labels,
    describe,
    is_object,
    read_list,
    read_metadata,
)
from kproxy.model.types import NodeInfo, Parsed, RejectReason

KIND: Final = "Node"
_IP_ADDRESS_TYPES: Final = frozenset({"InternalIP", "ExternalIP"})
_TAINT_EFFECTS: Final = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})
_MAX_ADDRESS_TEXT: Final = 317  # generous: a hostname address is a DNS name at most


def parse_node(obj: Mapping[str, Any]) -> Parsed[NodeInfo]:
    """Parse one v1 Node; never raises."""
    meta = read_metadata(obj, KIND, namespaced=False)
    if isinstance(meta, Parsed):
        return meta
    problems = ObjectProblems(KIND, "", meta.name)
    try:
        check_labels(meta.labels)
        spec = obj.get("spec")
        if spec is None:
            spec = {}
        elif not is_object(spec):
            raise Invalid("spec", "not an object", RejectReason.WRONG_TYPE)
        status = obj.get("status")
        if status is None:
            status = {}
        elif not is_object(status):
            raise Invalid("status", "not an object", RejectReason.WRONG_TYPE)
        node = NodeInfo(
            name=meta.name,
            labels=tuple(sorted(meta.labels.items())),
            pod_cidrs=_pod_cidrs(spec),
            addresses=_addresses(status, problems),
            being_deleted=meta.deletion_requested,
            taints=_taints(spec),
        )
    except Invalid as error:
        return problems.drop_invalid(error)
    return problems.result(node)


def _pod_cidrs(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """spec.podCIDRs (primary first), falling back to the legacy spec.podCIDR."""
    single = spec.get("podCIDR")
    raw = read_list(spec, "podCIDRs", "spec.podCIDRs", 2)
    path = "spec.podCIDRs"
    if not raw:
        if single is None or single == "":
            return ()
        raw, path = [single], "spec.podCIDR"
    elif single not in (None, "") and single != raw[0]:
        raise Invalid("spec.podCIDR", "must match spec.podCIDRs[0]", RejectReason.INCONSISTENT)
    cidrs: list[str] = []
    for index, value in enumerate(raw):
        field = path if path == "spec.podCIDR" else f"{path}[{index}]"
        cidr = normalize_cidr(value)
        if cidr is None:
            raise Invalid(field, f"not a CIDR: {describe(value)}", RejectReason.INVALID_CIDR)
        if cidrs and ip_family(cidrs[0]) is ip_family(cidr):
            raise Invalid(field, "two pod CIDRs of one family", RejectReason.INCONSISTENT)
        cidrs.append(cidr)
    return tuple(cidrs)


def _addresses(
    status: Mapping[str, Any], problems: ObjectProblems
) -> tuple[tuple[str, str], ...]:
    """status.addresses as (type, address); IP-typed addresses are normalised."""
    raw = read_list(status, "addresses", "status.addresses", MAX_UNBOUNDED_LIST)
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


def _taints(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """spec.taints as (key, effect), checked as the API checks them."""
    raw = read_list(spec, "taints", "spec.taints", MAX_UNBOUNDED_LIST)
    taints: list[tuple[str, str]] = []
    for index, entry in enumerate(raw):
        path = f"spec.taints[{index}]"
        if not is_object(entry):
            raise Invalid(path, "not an object", RejectReason.WRONG_TYPE)
        key, value, effect = entry.get("key"), entry.get("value"), entry.get("effect")
        if not is_qualified_name(key):
            raise Invalid(f"{path}.key", f"not a qualified name: {describe(key)}",
                          RejectReason.INVALID_LABEL)
        if value is not None and not is_label_value(value):
            raise Invalid(f"{path}.value", f"not a label value: {describe(value)}",
                          RejectReason.INVALID_LABEL)
        if type(effect) is not str or effect not in _TAINT_EFFECTS:
            raise Invalid(f"{path}.effect", f"unsupported effect {describe(effect)}",
                          RejectReason.UNSUPPORTED_VALUE)
        taints.append((key, effect))
    return tuple(taints)


def _short_text(value: object) -> TypeGuard[str]:
    return (
        type(value) is str and 0 < len(value) <= _MAX_ADDRESS_TEXT and value.isprintable()
    )
