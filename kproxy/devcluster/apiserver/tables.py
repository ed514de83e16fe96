"""Server-side printing: the ``Table`` representation kubectl asks for (``kubectl get``).

Columns and cell formats follow what a real server prints for each kind, so ``kubectl get``
output looks the same against this server as against a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kproxy.devcluster.apiserver.objects import JsonObject, StoredObject
from kproxy.devcluster.apiserver.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    NODES,
    SERVICES,
    ResourceType,
)

Column = tuple[str, str, int]  # name, description, priority (1: only with -o wide)
CellsFunction = Callable[[JsonObject, float], list[Any]]

_NAME: Column = ("Name", "Name of the object, unique within its namespace.", 0)
_AGE: Column = ("Age", "Time since the object was created.", 0)
_MAX_LISTED = 3


def human_duration(seconds: float) -> str:
    """Ages the way kubectl shows them: 45s, 3m20s, 5h, 12d, 2y30d."""
    total = int(seconds)
    if total < -1:
        return "<invalid>"
    if total < 0:
        return "0s"
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest_days = divmod(days, 365)
    if years < 8:
        return f"{years}y{rest_days}d" if rest_days else f"{years}y"
    return f"{years}y"


def _age(body: JsonObject, now: float) -> str:
    stamp = (body.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    try:
        created = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    return human_duration(now - created.timestamp())


def _joined(values: Sequence[str], empty: str) -> str:
    return ",".join(values) if values else empty


def _abbreviated(values: Sequence[str], empty: str) -> str:
    if not values:
        return empty
    shown = ",".join(values[:_MAX_LISTED])
    if len(values) > _MAX_LISTED:
        shown += f" + {len(values) - _MAX_LISTED} more..."
    return shown


def _service_cells(body: JsonObject, now: float) -> list[Any]:
    spec = body.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    external_ips = [str(ip) for ip in spec.get("externalIPs") or []]
    if kind == "ExternalName":
        external = str(spec.get("externalName") or "<none>")
    elif kind == "LoadBalancer":
        ingress = ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        balancers = [str(i.get("ip") or i.get("hostname") or "") for i in ingress]
        external = _joined([b for b in balancers if b] + external_ips, "<pending>")
    else:
        external = _joined(external_ips, "<none>")
    ports = []
    for port in spec.get("ports") or []:
        protocol = port.get("protocol", "TCP")
        if port.get("nodePort"):
            ports.append(f"{port.get('port')}:{port['nodePort']}/{protocol}")
        else:
            ports.append(f"{port.get('port')}/{protocol}")
    selector = spec.get("selector") or {}
    return [
        body["metadata"]["name"],
        kind,
        spec.get("clusterIP") or "<none>",
        external,
        _joined(ports, "<none>"),
        _age(body, now),
        _joined([f"{k}={v}" for k, v in sorted(selector.items())], "<none>"),
    ]


def _endpoint_slice_cells(body: JsonObject, now: float) -> list[Any]:
    ports = [
        "<unset>" if port.get("port") is None else str(port["port"])
        for port in body.get("ports") or []
    ]
    addresses = [
        str(address)
        for endpoint in body.get("endpoints") or []
        for address in endpoint.get("addresses") or []
    ]
    return [
        body["metadata"]["name"],
        body.get("addressType", ""),
        _abbreviated(ports, "<unset>"),
        _abbreviated(addresses, "<unset>"),
        _age(body, now),
    ]


def _node_cells(body: JsonObject, now: float) -> list[Any]:
    status = body.get("status") or {}
    ready = next(
        (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    state = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    if (body.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = body["metadata"].get("labels") or {}
    roles = sorted(
        {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")}
        | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set())
    )
    addresses = status.get("addresses") or []

    def first_address(kind: str) -> str:
        return next((str(a.get("address")) for a in addresses if a.get("type") == kind), "<none>")

    info = status.get("nodeInfo") or {}
    return [
        body["metadata"]["name"],
        state,
        _joined([r for r in roles if r], "<none>"),
        _age(body, now),
        info.get("kubeletVersion", ""),
        first_address("InternalIP"),
        first_address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _namespace_cells(body: JsonObject, now: float) -> list[Any]:
    phase = (body.get("status") or {}).get("phase", "")
    return [body["metadata"]["name"], phase, _age(body, now)]


_PRINTERS: dict[str, tuple[list[Column], CellsFunction]] = {
    SERVICES.plural: (
        [
            _NAME,
            ("Type", "The type of the Service.", 0),
            ("Cluster-IP", "The cluster IP of the Service.", 0),
            ("External-IP", "External addresses of the Service.", 0),
            ("Port(s)", "The ports the Service exposes.", 0),
            _AGE,
            ("Selector", "The labels of the Pods behind the Service.", 1),
        ],
        _service_cells,
    ),
    ENDPOINT_SLICES.plural: (
        [
            _NAME,
            ("AddressType", "The type of the addresses in this slice.", 0),
            ("Ports", "The ports of the endpoints.", 0),
            ("Endpoints", "The addresses of the endpoints.", 0),
            _AGE,
        ],
        _endpoint_slice_cells,
    ),
    NODES.plural: (
        [
            _NAME,
            ("Status", "Whether the node is ready.", 0),
            ("Roles", "The roles of the node.", 0),
            _AGE,
            ("Version", "The kubelet version.", 0),
            ("Internal-IP", "The node's internal address.", 1),
            ("External-IP", "The node's external address.", 1),
            ("OS-Image", "The node's OS image.", 1),
            ("Kernel-Version", "The node's kernel version.", 1),
            ("Container-Runtime", "The node's container runtime.", 1),
        ],
        _node_cells,
    ),
    NAMESPACES.plural: (
        [_NAME, ("Status", "The phase of the namespace.", 0), _AGE],
        _namespace_cells,
    ),
}


def partial_metadata(obj: StoredObject, meta_version: str) -> JsonObject:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{meta_version}",
        "metadata": obj.metadata,
    }


def table(
    resource: ResourceType,
    objects: Sequence[StoredObject],
    *,
    now: float,
    meta_version: str,
    include_object: str,
    list_metadata: JsonObject,
) -> JsonObject:
    columns, cells = _PRINTERS[resource.plural]
    rows = []
    for obj in objects:
        row: JsonObject = {"cells": cells(obj.body, now)}
        if include_object == "Object":
            row["object"] = obj.body
        elif include_object != "None":
            row["object"] = partial_metadata(obj, meta_version)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{meta_version}",
        "metadata": list_metadata,
        "columnDefinitions": [
            {
                "name": name,
                "type": "string",
                "format": "name" if name == "Name" else "",
                "description": description,
                "priority": priority,
            }
            for name, description, priority in columns
        ],
        "rows": rows,
    }
