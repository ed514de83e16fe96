"""discovery.k8s.io/v1 EndpointSlice objects -> ``EndpointSliceInfo``, as kube-proxy reads them.

Ignored without a rejection (value None): slices filtered out by the service label rules
(``service_selected``) and ``FQDN`` slices, which kube-proxy does not support. A None
value means "this slice contributes nothing", exactly like a deleted slice.

Everything else is validated as the API server (1.33) validates it, and a slice it would
refuse is rejected whole (value None with a whole-object rejection naming the field): the
name (DNS-1123 subdomain), namespace and labels, the ``kubernetes.io/service-name`` label
(required, a non-empty label value), addressType, at most 1000 endpoints
and 100 ports; port names (empty or DNS-1123 labels, unique) and protocols; per endpoint
1-100 addresses of the slice's family, none unspecified, loopback or link-local; conditions
booleans; nodeName a DNS-1123 subdomain, hostname a DNS-1123 label; at most 8 zone and
node hints, unique, zones label values and nodes node names. Port numbers must be 1-65535
(the API does not check them; a number outside would break the rules of every service).

Kept as kube-proxy keeps it: a port with no number ("all ports") or port 0 is ignored,
with a field-level rejection; only addresses[0] of an endpoint is used; a malformed
last-change-trigger-time annotation is ignored, with a field-level rejection; so is a zone
that is not a short printable name (the API does not check zones).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, NoReturn, TypeGuard

from kproxy.model.addresses import normalize_ip, special_ip_problem
from kproxy.model.formats import (
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_value,
)
from kproxy.model.labels import service_selected
from kproxy.model.objectmeta import (
    MAX_NAME_LENGTH,
    Invalid,
    ObjectMeta,
    ObjectProblems,
    check_labels,
    check_name,
    describe,
    is_object,
    port_number,
    read_list,
    read_metadata,
    read_port_identity,
)
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Parsed,
    RejectReason,
)

KIND: Final = "EndpointSlice"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
LAST_CHANGE_TRIGGER_TIME_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"
# The API server's bounds (pkg/apis/discovery/validation).
MAX_ENDPOINTS: Final = 1000
MAX_PORTS: Final = 100
MAX_ADDRESSES: Final = 100
MAX_HINTS: Final = 8

_ADDRESS_TYPES: Final[Mapping[object, IPFamily]] = {f.value: f for f in IPFamily}
_CONDITIONS: Final = ("ready", "serving", "terminating")
# Go's time.RFC3339Nano as kube-proxy parses it: upper-case T and Z, numeric offset.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


def parse_endpoint_slice(
    obj: Mapping[str, Any], *, proxy_name: str = ""
) -> Parsed[EndpointSliceInfo]:
    """Parse one EndpointSlice; never raises. Endpoints carry port 0: the slice's ports
    give the port numbers when slices are merged (``merge_endpoint_slices``)."""
    meta = read_metadata(obj, KIND, namespaced=True)
    if isinstance(meta, Parsed):
        return meta
    if not service_selected(meta.labels, proxy_name):
        return Parsed(None)
    problems = ObjectProblems(KIND, meta.namespace, meta.name)
    raw_type = obj.get("addressType")
    if raw_type == "FQDN":
        return Parsed(None)
    try:
        return problems.result(_slice_info(obj, meta, raw_type, problems))
    except Invalid as error:
        return problems.drop_invalid(error)


def _slice_info(
    obj: Mapping[str, Any], meta: ObjectMeta, raw_type: object, problems: ObjectProblems
) -> EndpointSliceInfo:
    check_labels(meta.labels)
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    if service_name == "" or not is_label_value(service_name):
        raise Invalid(
            f"metadata.labels[{SERVICE_NAME_LABEL}]",
            f"missing or not a service name: {describe(service_name)}",
            RejectReason.MISSING if service_name in (None, "") else RejectReason.INVALID_LABEL,
        )
    family = _ADDRESS_TYPES.get(raw_type) if type(raw_type) is str else None
    if family is None:
        raise Invalid("addressType", f"unsupported address type {describe(raw_type)}",
                      RejectReason.UNSUPPORTED_VALUE)
    raw_ports = read_list(obj, "ports", "ports", MAX_PORTS)
    raw_endpoints = read_list(obj, "endpoints", "endpoints", MAX_ENDPOINTS)
    ports: list[EndpointSlicePort] = []
    names: set[str] = set()
    for index, raw_port in enumerate(raw_ports):
        port = _slice_port(raw_port, index, names, problems)
        if port is not None:
            ports.append(port)
    endpoints = [
        _endpoint(raw_endpoint, index, family, problems)
        for index, raw_endpoint in enumerate(raw_endpoints)
    ]
    trigger_time = _last_change_trigger_time(meta.annotations, problems)
    return EndpointSliceInfo(
        meta.namespace,
        meta.name,
        str(service_name),
        family,
        tuple(ports),
        tuple(endpoints),
        trigger_time,
    )


def _slice_port(
    raw: object, index: int, names: set[str], problems: ObjectProblems
) -> EndpointSlicePort | None:
    """One ports[] entry. name and protocol default to "" and TCP, as the API server
    defaults them; a nil port ("all ports") or port 0 is skipped, as kube-proxy does."""
    path = f"ports[{index}]"
    if raw is None:
        problems.ignore(path, "null port entry (ignored, as in kube-proxy)")
        return None
    if not is_object(raw):
        raise Invalid(path, "not an object", RejectReason.WRONG_TYPE)
    name, protocol = read_port_identity(raw, path, names)
    raw_port = raw.get("port")
    if raw_port is None or (type(raw_port) is int and raw_port == 0):
        problems.ignore(
            f"{path}.port", "no port (\"all ports\" is not supported, as in kube-proxy)"
        )
        return None
    port = port_number(raw_port)
    if port is None:
        raise Invalid(f"{path}.port", f"not a port number (1-65535): {describe(raw_port)}",
                      RejectReason.INVALID_PORT)
    return EndpointSlicePort(name, port, protocol)


def _endpoint(
    raw: object, index: int, family: IPFamily, problems: ObjectProblems
) -> Endpoint:
    """One endpoints[] entry: only addresses[0] is used, as in kube-proxy (all addresses
    of one endpoint are the same pod), but all are checked. Conditions default as
    kube-proxy defaults them: ready and serving nil -> true, terminating nil -> false.

    This runs for every endpoint of every slice, so field paths are only formatted when
    there is something to reject.
    """
    if not is_object(raw):
        raise Invalid(f"endpoints[{index}]", "not an object", RejectReason.WRONG_TYPE)
    addresses = raw.get("addresses")
    if type(addresses) is not list or not addresses:
        raise Invalid(f"endpoints[{index}].addresses", "missing, empty or not a list",
                      RejectReason.MISSING if not addresses else RejectReason.WRONG_TYPE)
    if len(addresses) > MAX_ADDRESSES:
        raise Invalid(f"endpoints[{index}].addresses", f"more than {MAX_ADDRESSES}",
                      RejectReason.TOO_MANY)
    ipv6 = family is IPFamily.IPV6
    ip = normalize_ip(addresses[0])
    if ip is None or (":" in ip) is not ipv6 or special_ip_problem(ip) is not None:
        _bad_address(addresses[0], index, 0, family)
    for position in range(1, len(addresses)):
        other = normalize_ip(addresses[position])
        if other is None or (":" in other) is not ipv6 or special_ip_problem(other) is not None:
            _bad_address(addresses[position], index, position, family)

    ready, serving, terminating = True, True, False
    conditions = raw.get("conditions")
    if conditions is not None:
        if not is_object(conditions):
            raise Invalid(f"endpoints[{index}].conditions", "not an object",
                          RejectReason.WRONG_TYPE)
        raw_ready = conditions.get("ready")
        raw_serving = conditions.get("serving")
        raw_terminating = conditions.get("terminating")
        if (
            (raw_ready is not None and type(raw_ready) is not bool)
            or (raw_serving is not None and type(raw_serving) is not bool)
            or (raw_terminating is not None and type(raw_terminating) is not bool)
        ):
            key = next(
                k for k in _CONDITIONS
                if conditions.get(k) is not None and type(conditions.get(k)) is not bool
            )
            raise Invalid(f"endpoints[{index}].conditions.{key}",
                          f"not a boolean: {describe(conditions.get(key))}",
                          RejectReason.WRONG_TYPE)
        ready = raw_ready is not False
        serving = raw_serving is not False
        terminating = raw_terminating is True

    node_name = raw.get("nodeName")
    if node_name is not None and not is_dns1123_subdomain(node_name):
        check_name(node_name, f"endpoints[{index}].nodeName", is_dns1123_subdomain,
                   "DNS-1123 subdomain")
    hostname = raw.get("hostname")
    if hostname is not None and not is_dns1123_label(hostname):
        check_name(hostname, f"endpoints[{index}].hostname", is_dns1123_label,
                   "DNS-1123 label")
    zone = raw.get("zone")
    if zone is not None and not (
        type(zone) is str and 0 < len(zone) <= MAX_NAME_LENGTH and zone.isprintable()
    ):
        # The API does not check zones; one kproxy cannot use is no zone, as before.
        problems.ignore(f"endpoints[{index}].zone", f"not a zone name: {describe(zone)}")
        zone = None
    zone_hints: frozenset[str] | None = None
    node_hints: frozenset[str] | None = None
    hints = raw.get("hints")
    if hints is not None:
        path = f"endpoints[{index}].hints"
        if not is_object(hints):
            raise Invalid(path, "not an object", RejectReason.WRONG_TYPE)
        zone_hints = _hint_names(hints, "forZones", path, is_label_value)
        node_hints = _hint_names(hints, "forNodes", path, is_dns1123_subdomain)
    return Endpoint(ip, 0, ready, serving, terminating, node_name, zone, zone_hints, node_hints)


def _bad_address(address: object, index: int, position: int, family: IPFamily) -> NoReturn:
    """Raise the rejection of an endpoint address (the rare path: the reason is worked out
    here, not on every address)."""
    normalized = normalize_ip(address)
    if normalized is None:
        reason = f"not an IP address: {describe(address)}"
    elif (":" in normalized) is not (family is IPFamily.IPV6):
        reason = f"{normalized} is not an {family.value} address"
    else:
        reason = special_ip_problem(normalized) or "not an endpoint address"
    raise Invalid(f"endpoints[{index}].addresses[{position}]", reason, RejectReason.INVALID_IP)


def _hint_names(
    hints: Mapping[str, Any], key: str, path: str,
    is_name: Callable[[object], TypeGuard[str]],
) -> frozenset[str] | None:
    """The names in hints.forZones / forNodes (at most 8, unique); None when there are
    none, as kube-proxy treats an empty list like an absent one (no hints)."""
    raw = read_list(hints, key, f"{path}.{key}", MAX_HINTS)
    names: set[str] = set()
    for position, entry in enumerate(raw):
        name = entry.get("name") if is_object(entry) else None
        if not is_name(name):
            raise Invalid(f"{path}.{key}[{position}].name",
                          f"not a hint name: {describe(name)}", RejectReason.INVALID_NAME)
        if name in names:
            raise Invalid(f"{path}.{key}[{position}].name", f"duplicate hint {name!r}",
                          RejectReason.DUPLICATE)
        names.add(name)
    return frozenset(names) if names else None


def _last_change_trigger_time(
    annotations: Mapping[str, Any], problems: ObjectProblems
) -> float | None:
    """The trigger-time annotation as POSIX seconds; kube-proxy ignores a bad value (it
    only feeds the network programming latency metric), so do we, with a rejection."""
    raw = annotations.get(LAST_CHANGE_TRIGGER_TIME_ANNOTATION)
    if raw is None:
        return None
    if type(raw) is str and _RFC3339.fullmatch(raw):
        try:
            return datetime.fromisoformat(raw).timestamp()
        except ValueError:
            pass  # well-formed but impossible, e.g. month 13
    problems.ignore(
        f"metadata.annotations[{LAST_CHANGE_TRIGGER_TIME_ANNOTATION}]",
        f"not an RFC 3339 time: {describe(raw)}",
        RejectReason.IGNORED,
    )
    return None
