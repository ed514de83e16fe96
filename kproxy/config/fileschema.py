"""The ``KubeProxyConfiguration`` v1alpha1 schema, and a strict check of a decoded document.

The field tree follows kube-proxy's ``k8s.io/kube-proxy/config/v1alpha1`` types, plus the
legacy userspace field ``udpIdleTimeout`` that kproxy's userspace mode still honours. A
document is checked the way Go's strict JSON decoding treats it: unknown fields and wrong
types are errors; ``null`` means "not set", as it does for kube-proxy's pointer fields (and
``kubeadm`` writes ``null`` for many of them).
"""

from __future__ import annotations

import difflib
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from kproxy.config.govalues import parse_go_duration

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"


class Scalar(enum.Enum):
    STRING = "a string"
    BOOL = "a boolean"
    INT32 = "an integer"
    UINT32 = "a non-negative integer"
    FLOAT = "a number"
    DURATION = "a duration string such as 30s or 1m0s"
    QUANTITY = "a quantity such as 0 or 64Ki"  # resource.Quantity: string or number
    TIME_OR_DURATION = "a duration string or an integer number of nanoseconds"


@dataclass(frozen=True, slots=True)
class Struct:
    fields: Mapping[str, Node]


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Node


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Node


Node = Scalar | Struct | ListOf | MapOf

S, BOOL, I32, D = Scalar.STRING, Scalar.BOOL, Scalar.INT32, Scalar.DURATION

_FORMAT_OPTIONS = Struct({"splitStream": BOOL, "infoBufferSize": Scalar.QUANTITY})

KUBE_PROXY_CONFIGURATION = Struct(
    {
        "apiVersion": S,
        "kind": S,
        "featureGates": MapOf(BOOL),
        "clientConnection": Struct(
            {
                "kubeconfig": S,
                "acceptContentTypes": S,
                "contentType": S,
                "qps": Scalar.FLOAT,
                "burst": I32,
            }
        ),
        "logging": Struct(
            {
                "format": S,
                "flushFrequency": Scalar.TIME_OR_DURATION,
                "verbosity": Scalar.UINT32,
                "vmodule": ListOf(Struct({"filePattern": S, "verbosity": Scalar.UINT32})),
                "options": Struct({"text": _FORMAT_OPTIONS, "json": _FORMAT_OPTIONS}),
            }
        ),
        "hostnameOverride": S,
        "bindAddress": S,
        "healthzBindAddress": S,
        "metricsBindAddress": S,
        "bindAddressHardFail": BOOL,
        "enableProfiling": BOOL,
        "showHiddenMetricsForVersion": S,
        "mode": S,
        "iptables": Struct(
            {
                "masqueradeBit": I32,
                "masqueradeAll": BOOL,
                "localhostNodePorts": BOOL,
                "snatNodeInternalIP": BOOL,
                "syncPeriod": D,
                "minSyncPeriod": D,
            }
        ),
        "ipvs": Struct(
            {
                "syncPeriod": D,
                "minSyncPeriod": D,
                "scheduler": S,
                "excludeCIDRs": ListOf(S),
                "strictARP": BOOL,
                "tcpTimeout": D,
                "tcpFinTimeout": D,
                "udpTimeout": D,
            }
        ),
        "nftables": Struct(
            {"masqueradeBit": I32, "masqueradeAll": BOOL, "syncPeriod": D, "minSyncPeriod": D}
        ),
        "winkernel": Struct(
            {
                "networkName": S,
                "sourceVip": S,
                "enableDSR": BOOL,
                "rootHnsEndpointName": S,
                "forwardHealthCheckVip": BOOL,
            }
        ),
        "detectLocalMode": S,
        "detectLocal": Struct({"bridgeInterface": S, "interfaceNamePrefix": S}),
        "clusterCIDR": S,
        "nodePortAddresses": ListOf(S),
        "oomScoreAdj": I32,
        "conntrack": Struct(
            {
                "maxPerCore": I32,
                "min": I32,
                "tcpEstablishedTimeout": D,
                "tcpCloseWaitTimeout": D,
                "tcpBeLiberal": BOOL,
                "udpTimeout": D,
                "udpStreamTimeout": D,
            }
        ),
        "configSyncPeriod": D,
        "portRange": S,
        "windowsRunAsService": BOOL,
        "udpIdleTimeout": D,  # removed from kube-proxy with its userspace mode; kproxy uses it
    }
)

Value = str | bool | int | float | tuple[object, ...] | dict[str, object]


class SchemaError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def check_document(document: object) -> dict[str, Value]:
    """Check a decoded document against the schema; returns its set leaves by dotted path.

    Durations are returned as integer nanoseconds, lists as tuples. Raises ``SchemaError``
    naming the first offending field.
    """
    if not isinstance(document, dict):
        raise SchemaError("", f"must be a {KIND} mapping, got {_describe(document)}")
    _check_type_meta(document)
    leaves: dict[str, Value] = {}
    _check_struct(KUBE_PROXY_CONFIGURATION, document, "", leaves)
    return leaves


def _check_type_meta(document: dict[object, object]) -> None:
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version is None:
        raise SchemaError("apiVersion", f"missing; a kube-proxy config needs {API_VERSION}")
    if api_version != API_VERSION:
        raise SchemaError("apiVersion", f"must be {API_VERSION}, got {_describe(api_version)}")
    if kind is None:
        raise SchemaError("kind", f"missing; a kube-proxy config needs {KIND}")
    if kind != KIND:
        raise SchemaError("kind", f"must be {KIND}, got {_describe(kind)}")


def _check(node: Node, value: object, path: str, leaves: dict[str, Value]) -> None:
    if value is None:
        return
    if isinstance(node, Struct):
        _check_struct(node, value, path, leaves)
    elif isinstance(node, ListOf):
        if not isinstance(value, list):
            raise SchemaError(path, f"must be a list, got {_describe(value)}")
        for index, item in enumerate(value):
            if item is None:
                raise SchemaError(f"{path}[{index}]", "must not be null")
            _check(node.item, item, f"{path}[{index}]", {})
        leaves[path] = tuple(_leaf(node.item, item) for item in value)
    elif isinstance(node, MapOf):
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be a mapping, got {_describe(value)}")
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if not isinstance(key, str):
                raise SchemaError(item_path, f"key must be a string, got {_describe(key)}")
            if item is None:
                raise SchemaError(item_path, "must not be null")
            _check(node.value, item, item_path, {})
        leaves[path] = {str(key): _leaf(node.value, item) for key, item in value.items()}
    else:
        _check_scalar(node, value, path)
        leaves[path] = _leaf(node, value)


def _check_struct(node: Struct, value: object, path: str, leaves: dict[str, Value]) -> None:
    if not isinstance(value, dict):
        raise SchemaError(path, f"must be a mapping, got {_describe(value)}")
    for key, item in value.items():
        item_path = f"{path}.{key}" if path else str(key)
        child = node.fields.get(key) if isinstance(key, str) else None
        if child is None:
            raise SchemaError(item_path, "unknown field" + _suggestion(key, node))
        _check(child, item, item_path, leaves)


def _suggestion(key: object, node: Struct) -> str:
    close = difflib.get_close_matches(str(key), list(node.fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_scalar(kind: Scalar, value: object, path: str) -> None:
    if not _scalar_ok(kind, value):
        raise SchemaError(path, f"must be {kind.value}, got {_describe(value)}")


def _scalar_ok(kind: Scalar, value: object) -> bool:
    # bool is an int in Python but never a number in YAML or JSON.
    integer = value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is Scalar.STRING:
        return isinstance(value, str)
    if kind is Scalar.BOOL:
        return isinstance(value, bool)
    if kind is Scalar.INT32:
        return integer is not None and -(2**31) <= integer < 2**31
    if kind is Scalar.UINT32:
        return integer is not None and 0 <= integer < 2**32
    if kind is Scalar.FLOAT:
        return integer is not None or isinstance(value, float)
    if kind is Scalar.QUANTITY:
        return integer is not None or isinstance(value, (str, float))
    if kind is Scalar.TIME_OR_DURATION:
        return integer is not None or (isinstance(value, str) and _is_duration(value))
    return isinstance(value, str) and _is_duration(value)


def _is_duration(text: str) -> bool:
    try:
        parse_go_duration(text)
    except ValueError:
        return False
    return True


def _leaf(node: Node, value: object) -> Value:
    if node is Scalar.DURATION and isinstance(value, str):
        return parse_go_duration(value)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (str, bool, int, float, dict)):
        return value
    raise TypeError(f"unexpected value {value!r}")  # unreachable after _check


def _describe(value: object) -> str:
    """How a wrong value is shown in an error: its YAML type and, for scalars, the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"
