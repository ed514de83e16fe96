"""``/configz``: the effective configuration, in the document kube-proxy serves there.

kube-proxy registers its configuration with component-base's configz under its API group
(``kubeproxy.config.k8s.io``) and serves ``{"kubeproxy.config.k8s.io": <config>}`` as JSON.
The object it registers is its *internal* ``KubeProxyConfiguration`` (the v1alpha1 file after
conversion), which has no JSON tags: keys are Go's field names (``IPTables``, ``SyncPeriod``),
no ``kind``/``apiVersion``, durations as Go prints them (``30s``, ``15m0s``); only the
embedded ``logging`` section, a versioned component-base type, keeps its camelCase tags.

The document is derived from the v1alpha1 field tree kproxy reads files with
(:mod:`kproxy.config.fileschema`): each field starts at its Go zero value, takes kube-proxy's
default, then the value kproxy actually uses; then kube-proxy's v1alpha1 → internal
conversion moves the fields that changed place. Fields kproxy does not use show the
defaults kube-proxy would use, so the document is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from kproxy.config.fileschema import KUBE_PROXY_CONFIGURATION, ListOf, MapOf, Node, Scalar, Struct
from kproxy.config.govalues import NANOSECONDS_PER_SECOND, format_go_duration
from kproxy.config.record import DetectLocalMode, ProxyConfig

CONFIGZ_NAME: Final = "kubeproxy.config.k8s.io"
CONFIGZ_CONTENT_TYPE: Final = "application/json"

# kube-proxy's v1alpha1 defaults (SetDefaults_KubeProxyConfiguration and component-base's
# recommended logging configuration) for fields whose default is not Go's zero value.
KUBE_PROXY_DEFAULTS: Final[Mapping[str, object]] = {
    "featureGates": {},
    "clientConnection.contentType": "application/vnd.kubernetes.protobuf",
    "clientConnection.qps": 5,
    "clientConnection.burst": 10,
    "logging.format": "text",
    "logging.flushFrequency": "5s",
    "logging.options.text.infoBufferSize": "0",
    "logging.options.json.infoBufferSize": "0",
    "bindAddress": "0.0.0.0",
    "iptables.masqueradeBit": 14,
    "iptables.localhostNodePorts": True,
    "nftables.masqueradeBit": 14,
    "oomScoreAdj": -999,
    "conntrack.maxPerCore": 32768,
    "conntrack.min": 131072,
    "conntrack.tcpEstablishedTimeout": 24 * 3600 * NANOSECONDS_PER_SECOND,
    "conntrack.tcpCloseWaitTimeout": 3600 * NANOSECONDS_PER_SECOND,
}

# v1alpha1 path -> internal path, where kube-proxy's conversion moves a field; None: the
# internal type has no such field. Everything else keeps its place.
_MOVED: Final[Mapping[str, str | None]] = {
    "apiVersion": None,
    "kind": None,
    "conntrack": "linux.conntrack",
    "iptables.masqueradeAll": "linux.masqueradeAll",
    "oomScoreAdj": "linux.oomScoreAdj",
    "windowsRunAsService": "windows.runAsService",
    "iptables.syncPeriod": "syncPeriod",
    "iptables.minSyncPeriod": "minSyncPeriod",
    "clusterCIDR": "detectLocal.clusterCIDRs",
    "iptables.snatNodeInternalIP": None,
    "ipvs.syncPeriod": None,
    "ipvs.minSyncPeriod": None,
    "nftables.masqueradeAll": None,
    "nftables.syncPeriod": None,
    "nftables.minSyncPeriod": None,
    "portRange": None,
    "udpIdleTimeout": None,
}
# Go spells these words of a field name in capitals.
_INITIALISMS: Final = {"ip": "IP", "ipvs": "IPVS", "nf": "NF", "qps": "QPS", "oom": "OOM",
                       "tcp": "TCP", "udp": "UDP", "cidrs": "CIDRs", "cidr": "CIDR"}
# The versioned section that keeps its JSON tags, and its fields omitted when empty.
_TAGGED_SECTION: Final = "logging"
_OMITTED_WHEN_EMPTY: Final = frozenset(
    {"logging.vmodule", "logging.options.text.splitStream", "logging.options.json.splitStream"}
)


def effective_settings(config: ProxyConfig) -> dict[str, object]:
    """The v1alpha1 fields, by dotted path, as kproxy runs with ``config``."""
    settings: dict[str, object] = {}
    _zero_values(KUBE_PROXY_CONFIGURATION, "", settings)
    settings.update(KUBE_PROXY_DEFAULTS)
    nanoseconds = {
        "iptables.syncPeriod": config.sync_period,
        "iptables.minSyncPeriod": config.min_sync_period,
        "configSyncPeriod": config.config_sync_period,
    }
    settings.update({path: round(s * NANOSECONDS_PER_SECOND) for path, s in nanoseconds.items()})
    settings.update({
        "mode": config.proxy_mode.value,
        "clientConnection.kubeconfig": config.kubeconfig or "",
        "hostnameOverride": config.hostname,
        "healthzBindAddress": config.healthz_bind_address,
        "metricsBindAddress": config.metrics_bind_address,
        "bindAddressHardFail": config.bind_address_hard_fail,
        "bindAddress": config.bind_address,
        "iptables.masqueradeAll": config.masquerade_all,
        "iptables.masqueradeBit": config.masquerade_bit,
        "iptables.localhostNodePorts": config.localhost_nodeports,
        "detectLocalMode": (config.detect_local_mode or DetectLocalMode.CLUSTER_CIDR).value,
        "detectLocal.bridgeInterface": config.pod_bridge_interface or "",
        "detectLocal.interfaceNamePrefix": config.pod_interface_name_prefix or "",
        "clusterCIDR": ",".join(config.cluster_cidrs),
        "nodePortAddresses": list(config.nodeport_addresses) or None,
        "logging.format": config.logging_format.value,
        "logging.verbosity": config.verbosity,
    })
    return settings


def configz_document(config: ProxyConfig) -> dict[str, object]:
    """``{"kubeproxy.config.k8s.io": {...}}``, as kube-proxy's ``/configz`` answers."""
    internal: dict[str, object] = {}
    for path, value in effective_settings(config).items():
        target = _MOVED.get(path, path)
        for moved_from, moved_to in _MOVED.items():
            if moved_to is not None and path.startswith(moved_from + "."):
                target = moved_to + path[len(moved_from):]
        if target is None or (path in _OMITTED_WHEN_EMPTY and not value):
            continue
        _place(internal, target, _internal_value(target, value))
    return {CONFIGZ_NAME: internal}


def configz_json(config: ProxyConfig) -> bytes:
    return json.dumps(configz_document(config), separators=(",", ":")).encode()


def go_field_name(json_name: str) -> str:
    """``iptables`` -> ``IPTables``, ``tcpFinTimeout`` -> ``TCPFinTimeout``, ``qps`` -> ``QPS``."""
    for word, capitals in sorted(_INITIALISMS.items(), key=lambda item: -len(item[0])):
        rest = json_name[len(word):]
        if json_name.startswith(word) and (not rest or rest[0].isupper() or word == "nf"
                                           or (word == "ip" and rest.startswith("tables"))):
            return capitals + (rest[:1].upper() + rest[1:])
    return json_name[:1].upper() + json_name[1:]


def _zero_values(node: Node, path: str, settings: dict[str, object]) -> None:
    """Go's zero value for every field: "", false, 0, "0s"; null for lists and maps."""
    if isinstance(node, Struct):
        for name, child in node.fields.items():
            _zero_values(child, f"{path}.{name}" if path else name, settings)
    elif isinstance(node, (ListOf, MapOf)):
        settings[path] = None
    elif node is Scalar.STRING:
        settings[path] = ""
    elif node is Scalar.BOOL:
        settings[path] = False
    elif node in (Scalar.DURATION, Scalar.TIME_OR_DURATION):
        settings[path] = 0
    elif node is Scalar.QUANTITY:
        settings[path] = "0"
    else:
        settings[path] = 0


def _internal_value(target: str, value: object) -> object:
    if target == "detectLocal.clusterCIDRs":
        return str(value).split(",") if value else None
    if isinstance(value, int) and not isinstance(value, bool) and _is_duration(target):
        return format_go_duration(value)
    return value


def _is_duration(target: str) -> bool:
    node: Node = KUBE_PROXY_CONFIGURATION
    source = _source_path(target)
    for name in source.split("."):
        if not isinstance(node, Struct) or name not in node.fields:
            return False
        node = node.fields[name]
    return node in (Scalar.DURATION, Scalar.TIME_OR_DURATION)


def _source_path(target: str) -> str:
    for moved_from, moved_to in _MOVED.items():
        if moved_to is not None and (target == moved_to or target.startswith(moved_to + ".")):
            return moved_from + target[len(moved_to):]
    return target


def _place(document: dict[str, object], target: str, value: object) -> None:
    names = target.split(".")
    tagged = names[0] == _TAGGED_SECTION
    node = document
    for name in names[:-1]:
        key = name if tagged else go_field_name(name)
        child = node.setdefault(key, {})
        assert isinstance(child, dict)
        node = child
    node[names[-1] if tagged else go_field_name(names[-1])] = value
