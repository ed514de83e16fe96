"""Protobuf request bodies: just enough to accept what kubectl's typed clients send.

``kubectl create namespace`` and ``kubectl create service ...`` post Namespaces and Services
encoded as Kubernetes protobuf (``application/vnd.kubernetes.protobuf``): the magic ``k8s\\0``,
then a ``runtime.Unknown`` envelope naming apiVersion and kind around the encoded object.
This decodes those two kinds into the JSON form the rest of the server works with. Responses
are always JSON, which such clients accept.

The generated encoders write every non-pointer field, zero or not, where JSON omits them; so
zero values are dropped except for the fields that are pointers in the Go types (``optional``
below), whose zero value means something (``allocateLoadBalancerNodePorts: false``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: str  # string | int | bool | map | time | int-or-string | <message name>
    repeated: bool = False
    optional: bool = False  # a pointer in Go: its zero value is kept


def _fields(*entries: tuple[int, Field]) -> dict[int, Field]:
    return dict(entries)


_MESSAGES: dict[str, dict[int, Field]] = {
    "Unknown": _fields(
        (1, Field("typeMeta", "TypeMeta")),
        (2, Field("raw", "bytes")),
        (3, Field("contentEncoding", "string")),
        (4, Field("contentType", "string")),
    ),
    "TypeMeta": _fields((1, Field("apiVersion", "string")), (2, Field("kind", "string"))),
    "ObjectMeta": _fields(
        (1, Field("name", "string")),
        (2, Field("generateName", "string")),
        (3, Field("namespace", "string")),
        (5, Field("uid", "string")),
        (6, Field("resourceVersion", "string")),
        (7, Field("generation", "int")),
        (8, Field("creationTimestamp", "time")),
        (11, Field("labels", "map")),
        (12, Field("annotations", "map")),
        (14, Field("finalizers", "string", repeated=True)),
    ),
    "Namespace": _fields(
        (1, Field("metadata", "ObjectMeta")),
        (2, Field("spec", "NamespaceSpec")),
        (3, Field("status", "NamespaceStatus")),
    ),
    "NamespaceSpec": _fields((1, Field("finalizers", "string", repeated=True))),
    "NamespaceStatus": _fields((1, Field("phase", "string"))),
    "Service": _fields(
        (1, Field("metadata", "ObjectMeta")),
        (2, Field("spec", "ServiceSpec")),
        (3, Field("status", "ServiceStatus")),
    ),
    "ServiceSpec": _fields(
        (1, Field("ports", "ServicePort", repeated=True)),
        (2, Field("selector", "map")),
        (3, Field("clusterIP", "string")),
        (4, Field("type", "string")),
        (5, Field("externalIPs", "string", repeated=True)),
        (7, Field("sessionAffinity", "string")),
        (8, Field("loadBalancerIP", "string")),
        (9, Field("loadBalancerSourceRanges", "string", repeated=True)),
        (10, Field("externalName", "string")),
        (11, Field("externalTrafficPolicy", "string")),
        (12, Field("healthCheckNodePort", "int")),
        (13, Field("publishNotReadyAddresses", "bool")),
        (14, Field("sessionAffinityConfig", "SessionAffinityConfig")),
        (17, Field("ipFamilyPolicy", "string", optional=True)),
        (18, Field("clusterIPs", "string", repeated=True)),
        (19, Field("ipFamilies", "string", repeated=True)),
        (20, Field("allocateLoadBalancerNodePorts", "bool", optional=True)),
        (21, Field("loadBalancerClass", "string", optional=True)),
        (22, Field("internalTrafficPolicy", "string", optional=True)),
        (23, Field("trafficDistribution", "string", optional=True)),
    ),
    "ServicePort": _fields(
        (1, Field("name", "string")),
        (2, Field("protocol", "string")),
        (3, Field("port", "int")),
        (4, Field("targetPort", "int-or-string")),
        (5, Field("nodePort", "int")),
        (6, Field("appProtocol", "string", optional=True)),
    ),
    "SessionAffinityConfig": _fields((1, Field("clientIP", "ClientIPConfig"))),
    "ClientIPConfig": _fields((1, Field("timeoutSeconds", "int", optional=True))),
    "ServiceStatus": _fields((1, Field("loadBalancer", "LoadBalancerStatus"))),
    "LoadBalancerStatus": _fields((1, Field("ingress", "LoadBalancerIngress", repeated=True))),
    "LoadBalancerIngress": _fields(
        (1, Field("ip", "string")),
        (2, Field("hostname", "string")),
        (3, Field("ipMode", "string", optional=True)),
    ),
    "IntOrString": _fields(
        (1, Field("type", "int")), (2, Field("intVal", "int")), (3, Field("strVal", "string"))
    ),
    "Time": _fields((1, Field("seconds", "int")), (2, Field("nanos", "int"))),
    "MapEntry": _fields((1, Field("key", "string")), (2, Field("value", "string"))),
}

# (apiVersion, kind) of the objects this decoder understands.
SUPPORTED = {("v1", "Namespace"), ("v1", "Service")}


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ProtobufError("truncated or oversized varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _wire_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == _VARINT:
            value, position = _varint(data, position)
        elif wire_type == _LENGTH:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ProtobufError("truncated length-delimited field")
            value, position = data[position : position + length], position + length
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            value, position = data[position : position + size], position + size
        else:
            raise ProtobufError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar(field: Field, value: int | bytes) -> Any:
    kind = field.kind
    if kind in ("string", "bytes"):
        if not isinstance(value, bytes):
            raise ProtobufError(f"{field.name}: expected bytes")
        return value.decode() if kind == "string" else value
    if kind in ("int", "bool"):
        if not isinstance(value, int):
            raise ProtobufError(f"{field.name}: expected a varint")
        return _signed(value) if kind == "int" else value != 0
    if not isinstance(value, bytes):
        raise ProtobufError(f"{field.name}: expected a message")
    if kind == "map":
        entry = decode_message(value, "MapEntry")
        return (entry.get("key", ""), entry.get("value", ""))
    if kind == "time":
        moment = decode_message(value, "Time")
        if not moment.get("seconds"):
            return None
        stamp = datetime.fromtimestamp(moment["seconds"], UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "int-or-string":
        parsed = decode_message(value, "IntOrString")
        return parsed.get("strVal", "") if parsed.get("type") == 1 else parsed.get("intVal", 0)
    return decode_message(value, kind)


def _is_zero(value: Any) -> bool:
    return value is None or value in ("", 0, False, b"") or value == {} or value == []


def decode_message(data: bytes, message: str) -> dict[str, Any]:
    schema = _MESSAGES[message]
    result: dict[str, Any] = {}
    for number, _, raw in _wire_fields(data):
        field = schema.get(number)
        if field is None:
            continue  # a field this server does not model: dropped, as unknown JSON fields are
        value = _scalar(field, raw)
        if field.kind == "map":
            key, item = value
            result.setdefault(field.name, {})[key] = item
        elif field.repeated:
            result.setdefault(field.name, []).append(value)
        elif field.optional or not _is_zero(value):
            result[field.name] = value
    return result


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded Namespace or Service."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf prefix")
    envelope = decode_message(body[len(MAGIC) :], "Unknown")
    type_meta = envelope.get("typeMeta", {})
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if (api_version, kind) not in SUPPORTED:
        raise ProtobufError(f"protobuf bodies of {kind or 'unknown kind'} are not supported")
    if envelope.get("contentEncoding"):
        raise ProtobufError("encoded protobuf bodies are not supported")
    decoded = decode_message(envelope.get("raw", b""), kind)
    return {"apiVersion": api_version, "kind": kind, **decoded}
