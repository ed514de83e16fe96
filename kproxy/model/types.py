"""Frozen records that everything after the informers works with.

IP addresses are kept as normalised strings (``ipaddress`` compressed form): at 10,000
services that is far cheaper than ``ipaddress`` objects, and every consumer (rule
rendering, socket calls) wants strings anyway.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class Protocol(enum.StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class IPFamily(enum.StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"


class ServiceType(enum.StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


class TrafficPolicy(enum.StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


class SessionAffinity(enum.StrEnum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


# kube-proxy's default for sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10800


@dataclass(frozen=True, slots=True, order=True)
class NamespacedName:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """Identifies one port of one service, as kube-proxy's ServicePortName does."""

    namespace: str
    name: str
    port: str  # the service port's name; "" for an unnamed single port
    protocol: Protocol

    @property
    def service(self) -> NamespacedName:
        return NamespacedName(self.namespace, self.name)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.namespace}/{self.name}{port}/{self.protocol.value}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of one Service, with everything needed to program it on a node."""

    name: ServicePortName
    type: ServiceType
    cluster_ips: tuple[str, ...]  # primary family first; one per family at most
    port: int
    protocol: Protocol
    target_port: int | str  # informational: endpoints carry the resolved port
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip (VIP mode)
    load_balancer_source_ranges: tuple[str, ...] = ()  # normalised CIDRs
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int | None = None
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout_seconds: int = DEFAULT_AFFINITY_TIMEOUT_SECONDS
    traffic_distribution: str | None = None  # e.g. "PreferClose"

    @property
    def externally_accessible(self) -> bool:
        """NodePort, external IPs or load-balancer IPs make a port reachable from outside."""
        return (
            self.node_port is not None
            or bool(self.external_ips)
            or bool(self.load_balancer_ips)
        )

    @property
    def external_policy_local(self) -> bool:
        """externalTrafficPolicy Local only has meaning for externally reachable ports."""
        return self.externally_accessible and self.external_traffic_policy is TrafficPolicy.LOCAL

    @property
    def internal_policy_local(self) -> bool:
        return self.internal_traffic_policy is TrafficPolicy.LOCAL


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint address:port of one service port (after merging EndpointSlices)."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: frozenset[str] | None = None  # None: the slice gave no hints
    node_hints: frozenset[str] | None = None

    @property
    def address(self) -> str:
        """ip:port, with brackets for IPv6, as used in logs and chain-name hashing."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    @property
    def family(self) -> IPFamily:
        return IPFamily.IPV6 if ":" in self.ip else IPFamily.IPV4


@dataclass(frozen=True, slots=True)
class EndpointSlicePort:
    name: str  # matches the service port's name
    port: int
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class EndpointSliceInfo:
    """One parsed EndpointSlice. Several slices of one service are merged in the tracker."""

    namespace: str
    name: str
    service_name: str  # from the kubernetes.io/service-name label
    address_type: IPFamily
    ports: tuple[EndpointSlicePort, ...]
    endpoints: tuple[Endpoint, ...]  # port is 0 here: each slice port gives the port
    # endpoints.kubernetes.io/last-change-trigger-time as a POSIX timestamp, if present.
    last_change_trigger_time: float | None = None

    @property
    def service(self) -> NamespacedName:
        return NamespacedName(self.namespace, self.service_name)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address), e.g. ("InternalIP", "...")
    being_deleted: bool = False  # metadata.deletionTimestamp set
    taints: tuple[tuple[str, str], ...] = ()  # (key, effect)

    @property
    def zone(self) -> str | None:
        return dict(self.labels).get("topology.kubernetes.io/zone")


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A parsed Service: its ports (empty for headless, ExternalName, or ignored services)."""

    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()

    @property
    def key(self) -> NamespacedName:
        return NamespacedName(self.namespace, self.name)


class RejectReason(enum.StrEnum):
    """Why something was rejected: a short, fixed set, used as a metric label."""

    WRONG_TYPE = "wrong_type"  # not an object / list / string / number / boolean
    MISSING = "missing"  # a required value is absent or empty
    INVALID_NAME = "invalid_name"  # an object, port, node or host name of the wrong syntax
    INVALID_LABEL = "invalid_label"  # a label key or value of the wrong syntax
    INVALID_PORT = "invalid_port"  # a port number (or named port) out of range or malformed
    INVALID_IP = "invalid_ip"  # not an IP address, the wrong family, or a special address
    INVALID_CIDR = "invalid_cidr"
    INVALID_VALUE = "invalid_value"  # a value out of range or of the wrong form otherwise
    UNSUPPORTED_VALUE = "unsupported_value"  # not one of an enum's values
    TOO_MANY = "too_many"  # a list longer than the API allows (or than kproxy reads)
    DUPLICATE = "duplicate"
    FORBIDDEN = "forbidden"  # a field set where the API does not allow it
    INCONSISTENT = "inconsistent"  # fields that contradict each other
    IGNORED = "ignored"  # accepted by the API but not used by kube-proxy (field only)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something in an API object that could not be honoured and was skipped.

    ``field`` is a JSON-path-like location (``spec.ports[1].port``); ``whole_object``
    says whether the entire object was dropped or only the named part (only for what the
    API server accepts but kube-proxy ignores). ``code`` is the machine-readable reason.
    """

    kind: str
    namespace: str
    name: str
    field: str
    reason: str
    whole_object: bool = False
    code: RejectReason = RejectReason.INVALID_VALUE

    def __str__(self) -> str:
        scope = "skipped object" if self.whole_object else "ignored field"
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return escape_for_log(
            f"{self.kind} {where}: {scope} {self.field}: {self.reason} [{self.code.value}]"
        )


def escape_for_log(text: str) -> str:
    """Text with every non-printable character (NUL, newline, ESC, other controls, line
    separators) written as a Python escape, so one log line stays one harmless line.
    Names in rejections are untrusted: they are logged before, or because, they failed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """The result of parsing one object: the record (None if dropped) and what was rejected."""

    value: T | None
    rejections: tuple[Rejection, ...] = field(default=())
