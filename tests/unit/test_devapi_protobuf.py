"""Protobuf request bodies (what kubectl's typed clients send) decoded into API objects."""

from __future__ import annotations

import pytest

from kproxy.devcluster.apiserver.protobuf import MAGIC, ProtobufError, decode_object


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def number(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def nested(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def text(field: int, value: str) -> bytes:
    return nested(field, value.encode())


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = text(1, api_version) + text(2, kind)
    return MAGIC + nested(1, type_meta) + nested(2, raw) + text(3, "") + text(4, "")


def test_decodes_a_namespace_with_zero_values_dropped() -> None:
    metadata = text(1, "team") + text(2, "") + number(7, 0) + nested(8, b"")
    metadata += nested(11, text(1, "env") + text(2, "dev"))
    raw = nested(1, metadata) + nested(2, b"") + nested(3, text(1, ""))
    assert decode_object(envelope("v1", "Namespace", raw)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "labels": {"env": "dev"}},
    }


def test_decodes_a_service_spec() -> None:
    http = text(1, "http") + text(2, "TCP") + number(3, 80)
    http += nested(4, number(1, 0) + number(2, 8080)) + number(5, 0)
    named = (
        text(1, "dns") + text(2, "UDP") + number(3, 53) + nested(4, number(1, 1) + text(3, "dns"))
    )
    spec = nested(1, http) + nested(1, named)
    spec += nested(2, text(1, "app") + text(2, "web"))
    spec += text(4, "LoadBalancer") + number(13, 0) + number(20, 0)
    spec += nested(14, nested(1, number(1, 60)))
    raw = nested(1, text(1, "web")) + nested(2, spec)
    decoded = decode_object(envelope("v1", "Service", raw))
    assert decoded["spec"] == {
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns"},
        ],
        "selector": {"app": "web"},
        "type": "LoadBalancer",
        # A pointer field: false is kept, it is not the same as unset.
        "allocateLoadBalancerNodePorts": False,
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
    }


def test_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ProtobufError, match="prefix"):
        decode_object(b"{}")
    with pytest.raises(ProtobufError, match="Pod"):
        decode_object(envelope("v1", "Pod", b""))
    with pytest.raises(ProtobufError, match="truncated"):
        decode_object(MAGIC + varint(1 << 3 | 2) + varint(50) + b"short")
