"""discovery.k8s.io/v1 EndpointSlice objects -> ``EndpointSliceInfo``, as kube-proxy reads them.

Ignored without a rejection (value None): slices filtered out by the service label rules
(``service_selected``) and ``FQDN`` slices, which kube-proxy does not support. A None
value means "this slice contributes nothing", exactly like a deleted slice.

Rejected whole: no usable metadata, no ``kubernetes.io/service-name`` label (kube-proxy
cannot tell which service the slice belongs to and drops it), an unknown addressType, or
``ports`` / ``endpoints`` of the wrong shape.

Rejected in part, the rest still used: a port entry with no port, port 0, a port out of
range or an unknown protocol (kube-proxy skips such ports); an endpoint with no address,
an address that is not an IP or not of the slice's family, or conditions that are not
booleans (better to drop one endpoint than to send traffic to a pod that may be unready);
a bad nodeName, zone or hint (dropped, the endpoint kept); a bad last-change-trigger-time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TypeGuard

from kproxy.model.addresses import normalize_ip
from kproxy.model.labels import service_selected
from kproxy.model.objectmeta import (
    MAX_NAME_LENGTH,
    ObjectProblems,
    describe,
    is_object,
    port_number,
    read_metadata,
    read_port_identity,
)
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Parsed,
)

KIND: Final = "EndpointSlice"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
LAST_CHANGE_TRIGGER_TIME_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"

_ADDRESS_TYPES: Final[Mapping[object, IPFamily]] = {f.value: f for f in IPFamily}
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
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    if not _is_short_name(service_name):
        return problems.drop(
            f"metadata.labels[{SERVICE_NAME_LABEL}]",
            f"missing or not a service name: {describe(service_name)}",
        )
    raw_type = obj.get("addressType")
    if raw_type == "FQDN":
        return Parsed(None)
    family = _ADDRESS_TYPES.get(raw_type) if type(raw_type) is str else None
    if family is None:
        return problems.drop("addressType", f"unsupported address type {describe(raw_type)}")
    raw_ports = obj.get("ports")
    if raw_ports is None:
        raw_ports = ()
    elif not isinstance(raw_ports, list):
        return problems.drop("ports", "not a list")
    raw_endpoints = obj.get("endpoints")
    if raw_endpoints is None:
        raw_endpoints = ()
    elif not isinstance(raw_endpoints, list):
        return problems.drop("endpoints", "not a list")

    ports: list[EndpointSlicePort] = []
    for index, raw_port in enumerate(raw_ports):
        port = _slice_port(raw_port, index, problems)
        if port is not None:
            ports.append(port)
    endpoints: list[Endpoint] = []
    for index, raw_endpoint in enumerate(raw_endpoints):
        endpoint = _endpoint(raw_endpoint, index, family, problems)
        if endpoint is not None:
            endpoints.append(endpoint)
    trigger_time = _last_change_trigger_time(meta.annotations, problems)
    return problems.result(
        EndpointSliceInfo(
            meta.namespace,
            meta.name,
            service_name,
            family,
            tuple(ports),
            tuple(endpoints),
            trigger_time,
        )
    )


def _slice_port(raw: object, index: int, problems: ObjectProblems) -> EndpointSlicePort | None:
    """One ports[] entry. name and protocol default to "" and TCP, as the API server
    defaults them; a nil port ("all ports") or port 0 is skipped, as kube-proxy does."""
    path = f"ports[{index}]"
    if not is_object(raw):
        problems.ignore(path, "not an object")
        return None
    identity = read_port_identity(raw, path, problems)
    if identity is None:
        return None
    name, protocol = identity
    raw_port = raw.get("port")
    port = port_number(raw_port)
    if port is None:
        reason = (
            "no port (\"all ports\" is not supported, as in kube-proxy)"
            if raw_port is None
            else f"not a port number (1-65535): {describe(raw_port)}"
        )
        problems.ignore(f"{path}.port", reason)
        return None
    return EndpointSlicePort(name, port, protocol)


def _endpoint(
    raw: object, index: int, family: IPFamily, problems: ObjectProblems
) -> Endpoint | None:
    """One endpoints[] entry: only addresses[0] is used, as in kube-proxy (all addresses
    of one endpoint are the same pod). Conditions default as kube-proxy defaults them:
    ready and serving nil -> true, terminating nil -> false.

    This runs for every endpoint of every slice, so field paths for rejections are only
    formatted when there is something to reject.
    """
    if not is_object(raw):
        problems.ignore(f"endpoints[{index}]", "not an object")
        return None
    addresses = raw.get("addresses")
    if type(addresses) is not list or not addresses:
        problems.ignore(f"endpoints[{index}].addresses", "missing or empty")
        return None
    ip = normalize_ip(addresses[0])
    if ip is None or (":" in ip) is not (family is IPFamily.IPV6):
        reason = (
            f"not an IP address: {describe(addresses[0])}"
            if ip is None
            else f"{ip} is not an {family.value} address"
        )
        problems.ignore(f"endpoints[{index}].addresses[0]", reason)
        return None

    ready, serving, terminating = True, True, False
    conditions = raw.get("conditions")
    if conditions is not None:
        if not is_object(conditions):
            problems.ignore(f"endpoints[{index}].conditions", "not an object")
            return None
        raw_ready = conditions.get("ready")
        raw_serving = conditions.get("serving")
        raw_terminating = conditions.get("terminating")
        if (
            (raw_ready is not None and type(raw_ready) is not bool)
            or (raw_serving is not None and type(raw_serving) is not bool)
            or (raw_terminating is not None and type(raw_terminating) is not bool)
        ):
            for key in ("ready", "serving", "terminating"):
                value = conditions.get(key)
                if value is not None and type(value) is not bool:
                    problems.ignore(
                        f"endpoints[{index}].conditions.{key}", f"not a boolean: {describe(value)}"
                    )
            return None
        ready = raw_ready is not False
        serving = raw_serving is not False
        terminating = raw_terminating is True

    node_name = raw.get("nodeName")
    if node_name is not None and not _is_short_name(node_name):
        problems.ignore(f"endpoints[{index}].nodeName", f"not a name: {describe(node_name)}")
        node_name = None
    zone = raw.get("zone")
    if zone is not None and not _is_short_name(zone):
        problems.ignore(f"endpoints[{index}].zone", f"not a name: {describe(zone)}")
        zone = None
    zone_hints: frozenset[str] | None = None
    node_hints: frozenset[str] | None = None
    hints = raw.get("hints")
    if hints is not None:
        path = f"endpoints[{index}].hints"
        if is_object(hints):
            zone_hints = _hint_names(hints.get("forZones"), f"{path}.forZones", problems)
            node_hints = _hint_names(hints.get("forNodes"), f"{path}.forNodes", problems)
        else:
            problems.ignore(path, "not an object")
    return Endpoint(ip, 0, ready, serving, terminating, node_name, zone, zone_hints, node_hints)


def _is_short_name(value: object) -> TypeGuard[str]:
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH


def _hint_names(raw: object, path: str, problems: ObjectProblems) -> frozenset[str] | None:
    """The names in hints.forZones / forNodes; None when there are none, as kube-proxy
    treats an empty list like an absent one (the endpoint then has no hints)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        problems.ignore(path, "not a list")
        return None
    names: set[str] = set()
    for index, entry in enumerate(raw):
        name = entry.get("name") if is_object(entry) else None
        if _is_short_name(name):
            names.add(name)
        else:
            problems.ignore(f"{path}[{index}]", f"not a hint with a name: {describe(entry)}")
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
    )
    return None
