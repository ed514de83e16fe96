"""v1 Service objects -> ``ServiceInfo``, with kube-proxy's (1.33) semantics.

Skipped without a rejection (kube-proxy ignores these on purpose, they are not errors);
the result is a ``ServiceInfo`` with no ports, so an update into one of these states
removes the service's rules:

- objects labelled ``service.kubernetes.io/headless``, or labelled
  ``service.kubernetes.io/service-proxy-name`` with a value other than this proxy's name
  (kube-proxy filters both with a server-side label selector);
- headless services (``clusterIP: None``) and services with no cluster IP yet, and
  ``type: ExternalName`` (kube-proxy's ``ShouldSkipService``).

Everything else is validated as the API server (1.33) validates it, and an object it
would refuse is rejected whole (value None, one rejection naming the field): the name
(DNS-1035 label), namespace and labels; type and the policies (enums); cluster IPs (at
most two, one per family, ``clusterIP`` equal to ``clusterIPs[0]``); ports (names DNS-1123
labels, required and unique when there are several, port and nodePort 1-65535, no
duplicate port or nodePort per protocol, targetPort a number or an IANA_SVC_NAME); external
IPs and load-balancer ingress IPs; source ranges (trimmed and parsed sloppily, as both the
API server and kube-proxy do); session affinity and its timeout (1-86400 s). Fields the API
server fills in by default may be absent (objects read from files): they take the default.

Kept as kube-proxy keeps it, without a rejection: ingress entries with ``ipMode: Proxy``
or a hostname only. A missing healthCheckNodePort is reported as an ignored field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kproxy.model.addresses import (
    ip_family,
    normalize_cidr_sloppy,
    normalize_ip,
    special_ip_problem,
)
from kproxy.model.formats import (
    is_dns1035_label,
    is_dns1123_subdomain,
    is_iana_svc_name,
)
from kproxy.model.labels import service_selected
from kproxy.model.objectmeta import (
    MAX_UNBOUNDED_LIST,
    Invalid,
    ObjectMeta,
    ObjectProblems,
    check_labels,
    describe,
    is_object,
    port_number,
    read_list,
    read_metadata,
    read_port_identity,
)
from kproxy.model.types import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    Parsed,
    Protocol,
    RejectReason,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)

KIND: Final = "Service"
MAX_AFFINITY_TIMEOUT_SECONDS: Final = 86400  # API validation's upper bound (one day)

_SERVICE_TYPES: Final[Mapping[object, ServiceType]] = {t.value: t for t in ServiceType}
_NODE_PORT_TYPES: Final = frozenset({ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER})
_TRAFFIC_POLICIES: Final[Mapping[object, TrafficPolicy]] = {p.value: p for p in TrafficPolicy}
_AFFINITIES: Final[Mapping[object, SessionAffinity]] = {a.value: a for a in SessionAffinity}
# PreferClose is GA; PreferSameZone and PreferSameNode are what a 1.33 API server accepts
# with its PreferSameTrafficDistribution gate on. The planner decides which it honours.
_TRAFFIC_DISTRIBUTIONS: Final = frozenset({"PreferClose", "PreferSameZone", "PreferSameNode"})
_IP_MODES: Final = frozenset({"VIP", "Proxy"})
_NO_VALUE: Final = (None, "")
_SERVICE_NAME: Final = (is_dns1035_label, "DNS-1035 label")

_PortFields = tuple[str, Protocol, int, int | str, int | None]


def parse_service(obj: Mapping[str, Any], *, proxy_name: str = "") -> Parsed[ServiceInfo]:
    """Parse one v1 Service as kube-proxy would see it; never raises.

    ``proxy_name`` is this proxy's ``service.kubernetes.io/service-proxy-name`` ("" for the
    default proxy, which serves only unlabelled services).
    """
    meta = read_metadata(obj, KIND, namespaced=True, name_rule=_SERVICE_NAME)
    if isinstance(meta, Parsed):
        return meta
    problems = ObjectProblems(KIND, meta.namespace, meta.name)
    if not service_selected(meta.labels, proxy_name):
        return Parsed(ServiceInfo(meta.namespace, meta.name))
    try:
        return problems.result(_service_info(obj, meta, problems))
    except Invalid as error:
        return problems.drop_invalid(error)


def _service_info(
    obj: Mapping[str, Any], meta: ObjectMeta, problems: ObjectProblems
) -> ServiceInfo:
    check_labels(meta.labels)
    spec = obj.get("spec")
    if not is_object(spec):
        raise Invalid("spec", "missing or not an object", RejectReason.WRONG_TYPE)
    service_type = _service_type(spec)
    cluster_ips = _cluster_ips(spec, service_type)
    raw_ports = read_list(spec, "ports", "spec.ports", MAX_UNBOUNDED_LIST)
    external_ips = _external_ips(spec)
    # The API's ExternallyAccessible: NodePort and LoadBalancer services, and ClusterIP
    # services with external IPs.
    externally_accessible = service_type in _NODE_PORT_TYPES or (
        service_type is ServiceType.CLUSTER_IP and len(external_ips) > 0
    )
    external_policy = _external_policy(spec, externally_accessible)
    internal_policy = _enum(
        spec, "internalTrafficPolicy", _TRAFFIC_POLICIES, TrafficPolicy.CLUSTER
    )
    needs_health_check = (
        service_type is ServiceType.LOAD_BALANCER and external_policy is TrafficPolicy.LOCAL
    )
    health_check_node_port = _health_check_node_port(spec, needs_health_check, problems)
    affinity, affinity_timeout = _session_affinity(spec)
    traffic_distribution = _traffic_distribution(spec)
    source_ranges = _source_ranges(spec, service_type)
    load_balancer_ips = _load_balancer_ips(obj.get("status"))
    if service_type is ServiceType.EXTERNAL_NAME:
        _external_name(spec)
    if not raw_ports and service_type is not ServiceType.EXTERNAL_NAME and not _headless(spec):
        # The API's "spec.ports: Required value": only headless and ExternalName services may
        # have none. Accepting it would let a broken update empty a served service.
        raise Invalid("spec.ports", "missing: a service that is not headless needs a port",
                      RejectReason.MISSING)
    port_fields = _ports(raw_ports, service_type)
    if service_type is ServiceType.EXTERNAL_NAME or not cluster_ips:
        return ServiceInfo(meta.namespace, meta.name)

    ports = tuple(
        ServicePort(
            ServicePortName(meta.namespace, meta.name, port_name, protocol),
            service_type,
            cluster_ips,
            port,
            protocol,
            target_port,
            node_port,
            external_ips,
            load_balancer_ips,
            source_ranges,
            external_policy,
            internal_policy,
            health_check_node_port,
            affinity,
            affinity_timeout,
            traffic_distribution,
        )
        for port_name, protocol, port, target_port, node_port in port_fields
    )
    return ServiceInfo(meta.namespace, meta.name, ports)


def _service_type(spec: Mapping[str, Any]) -> ServiceType:
    """spec.type; absent means ClusterIP (the API default)."""
    service_type: ServiceType = _enum(spec, "type", _SERVICE_TYPES, ServiceType.CLUSTER_IP)
    return service_type


def _enum(spec: Mapping[str, Any], key: str, values: Mapping[object, Any], default: Any) -> Any:
    """spec[key], one of ``values``; absent or "" is the API default."""
    raw = spec.get(key)
    if raw in _NO_VALUE:
        return default
    value = values.get(raw) if type(raw) is str else None
    if value is None:
        raise Invalid(f"spec.{key}", f"unsupported value {describe(raw)}",
                      RejectReason.UNSUPPORTED_VALUE)
    return value


def _headless(spec: Mapping[str, Any]) -> bool:
    """clusterIP (or clusterIPs[0]) is "None"."""
    raw = spec.get("clusterIPs")
    first = raw[0] if type(raw) is list and raw else spec.get("clusterIP")
    return bool(first == "None")


def _cluster_ips(spec: Mapping[str, Any], service_type: ServiceType) -> tuple[str, ...]:
    """Normalised cluster IPs, primary first: at most two, of different families.

    ``()`` for a headless service or one without a cluster IP yet (skipped, as kube-proxy's
    ``ShouldSkipService`` does). ``spec.clusterIPs`` wins over the legacy ``spec.clusterIP``,
    which must then equal its first entry, as the API requires.
    """
    single = spec.get("clusterIP")
    raw = spec.get("clusterIPs")
    path = "spec.clusterIPs"
    if raw is None or raw == []:
        raw = [] if single in _NO_VALUE else [single]
        path = "spec.clusterIP"
    elif type(raw) is not list:
        raise Invalid(path, "not a list", RejectReason.WRONG_TYPE)
    elif single not in _NO_VALUE and single != raw[0]:
        raise Invalid("spec.clusterIP", "must match spec.clusterIPs[0]",
                      RejectReason.INCONSISTENT)
    if service_type is ServiceType.EXTERNAL_NAME:
        if raw:
            raise Invalid(path, "may not be set for ExternalName services",
                          RejectReason.FORBIDDEN)
        return ()
    if len(raw) > 2:
        raise Invalid(path, "more than two cluster IPs", RejectReason.TOO_MANY)
    if not raw or raw == [""]:
        return ()  # not allocated yet (an object from a file)
    if raw[0] == "None":
        if len(raw) > 1:
            raise Invalid(path, "'None' must be the only value", RejectReason.INCONSISTENT)
        if service_type in _NODE_PORT_TYPES:
            raise Invalid(path, f"may not be 'None' for {service_type.value} services",
                          RejectReason.FORBIDDEN)
        return ()
    ips: list[str] = []
    for index, value in enumerate(raw):
        field = path if path == "spec.clusterIP" else f"{path}[{index}]"
        ip = normalize_ip(value)
        if ip is None:
            raise Invalid(field, f"not an IP address: {describe(value)}",
                          RejectReason.INVALID_IP)
        if ips and ip_family(ips[0]) is ip_family(ip):
            raise Invalid(field, "two cluster IPs of one family", RejectReason.INCONSISTENT)
        ips.append(ip)
    return tuple(ips)


def _ports(raw_ports: list[Any], service_type: ServiceType) -> list[_PortFields]:
    """(name, protocol, port, targetPort, nodePort) of every spec.ports entry."""
    names: set[str] = set()
    seen_ports: set[tuple[Protocol, int]] = set()
    seen_node_ports: set[tuple[Protocol, int]] = set()
    require_name = len(raw_ports) > 1
    fields: list[_PortFields] = []
    for index, raw in enumerate(raw_ports):
        path = f"spec.ports[{index}]"
        entry = _port_fields(raw, path, service_type, names, require_name)
        _, protocol, port, _, node_port = entry
        if (protocol, port) in seen_ports:
            raise Invalid(path, f"duplicate port {port}/{protocol.value}",
                          RejectReason.DUPLICATE)
        seen_ports.add((protocol, port))
        if node_port is not None:
            if (protocol, node_port) in seen_node_ports:
                raise Invalid(f"{path}.nodePort", f"duplicate nodePort {node_port}",
                              RejectReason.DUPLICATE)
            seen_node_ports.add((protocol, node_port))
        fields.append(entry)
    return fields


def _port_fields(
    raw: object, path: str, service_type: ServiceType, names: set[str], require_name: bool
) -> _PortFields:
    """One spec.ports entry. targetPort absent, 0 or "" is the port (the API default);
    nodePort absent or 0 means none (allocateLoadBalancerNodePorts: false) and is
    forbidden on ClusterIP services."""
    if not is_object(raw):
        raise Invalid(path, "not an object", RejectReason.WRONG_TYPE)
    name, protocol = read_port_identity(raw, path, names)
    if require_name and not name:
        raise Invalid(f"{path}.name", "required when a service has several ports",
                      RejectReason.MISSING)
    raw_port = raw.get("port")
    port = port_number(raw_port)
    if port is None:
        raise Invalid(f"{path}.port", f"not a port number (1-65535): {describe(raw_port)}",
                      RejectReason.INVALID_PORT)
    raw_target = raw.get("targetPort")
    target_port: int | str
    if raw_target is None or _is_zero(raw_target) or raw_target == "":
        target_port = port
    elif is_iana_svc_name(raw_target):
        target_port = raw_target
    else:
        number = port_number(raw_target)
        if number is None:
            raise Invalid(f"{path}.targetPort",
                          f"not a port number or IANA_SVC_NAME: {describe(raw_target)}",
                          RejectReason.INVALID_PORT)
        target_port = number
    node_port = None
    raw_node_port = raw.get("nodePort")
    if raw_node_port is not None and not _is_zero(raw_node_port):
        if service_type is ServiceType.CLUSTER_IP:
            raise Invalid(f"{path}.nodePort", "may not be used when type is ClusterIP",
                          RejectReason.FORBIDDEN)
        node_port = port_number(raw_node_port)
        if node_port is None:
            raise Invalid(f"{path}.nodePort",
                          f"not a port number (1-65535): {describe(raw_node_port)}",
                          RejectReason.INVALID_PORT)
        if service_type not in _NODE_PORT_TYPES:
            node_port = None  # ExternalName: never served
    return name, protocol, port, target_port, node_port


def _external_ips(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """spec.externalIPs: normalised and de-duplicated, of both families (the planner
    filters per family, as kube-proxy's proxier does). Not unspecified, loopback or
    link-local, as the API requires."""
    raw = read_list(spec, "externalIPs", "spec.externalIPs", MAX_UNBOUNDED_LIST)
    ips: dict[str, None] = {}
    for index, value in enumerate(raw):
        ip = normalize_ip(value)
        problem = f"not an IP address: {describe(value)}" if ip is None else special_ip_problem(ip)
        if problem is not None or ip is None:
            raise Invalid(f"spec.externalIPs[{index}]", problem or "", RejectReason.INVALID_IP)
        ips[ip] = None
    return tuple(ips)


def _load_balancer_ips(status: object) -> tuple[str, ...]:
    """status.loadBalancer.ingress[].ip of VIP-mode ingresses.

    As kube-proxy's ``IsVIPMode``: ipMode absent or ``VIP`` is programmed, ``Proxy`` means
    the load balancer forwards to node ports itself and is skipped without a rejection.
    Hostname-only ingresses are skipped likewise; the service type is not consulted.
    """
    if status is None:
        return ()
    if not is_object(status):
        raise Invalid("status", "not an object", RejectReason.WRONG_TYPE)
    load_balancer = status.get("loadBalancer")
    if load_balancer is None:
        return ()
    if not is_object(load_balancer):
        raise Invalid("status.loadBalancer", "not an object", RejectReason.WRONG_TYPE)
    ingress = read_list(
        load_balancer, "ingress", "status.loadBalancer.ingress", MAX_UNBOUNDED_LIST
    )
    ips: dict[str, None] = {}
    for index, entry in enumerate(ingress):
        path = f"status.loadBalancer.ingress[{index}]"
        if not is_object(entry):
            raise Invalid(path, "not an object", RejectReason.WRONG_TYPE)
        hostname = entry.get("hostname")
        if hostname not in _NO_VALUE and (
            not is_dns1123_subdomain(hostname) or normalize_ip(hostname) is not None
        ):
            raise Invalid(f"{path}.hostname", f"not a DNS name: {describe(hostname)}",
                          RejectReason.INVALID_NAME)
        raw_ip = entry.get("ip")
        mode = entry.get("ipMode")
        if mode is not None and (type(mode) is not str or mode not in _IP_MODES):
            raise Invalid(f"{path}.ipMode", f"unsupported value {describe(mode)}",
                          RejectReason.UNSUPPORTED_VALUE)
        if raw_ip in _NO_VALUE:
            if mode is not None:
                raise Invalid(f"{path}.ipMode", "may not be set without ip",
                              RejectReason.FORBIDDEN)
            continue
        ip = normalize_ip(raw_ip)
        if ip is None:
            raise Invalid(f"{path}.ip", f"not an IP address: {describe(raw_ip)}",
                          RejectReason.INVALID_IP)
        if mode != "Proxy":
            ips[ip] = None
    return tuple(ips)


def _source_ranges(spec: Mapping[str, Any], service_type: ServiceType) -> tuple[str, ...]:
    """spec.loadBalancerSourceRanges as normalised CIDRs (host bits cleared).

    As both the API server and kube-proxy read them: surrounding whitespace is trimmed
    and the CIDR parsed sloppily (IPv4 octets and the prefix length with leading zeros
    are read as decimal, as Go's ``netutils.ParseCIDRSloppy``). Only LoadBalancer
    services may have them. The ``service.beta.kubernetes.io/load-balancer-source-ranges``
    annotation is NOT read: only cloud providers honour it, kube-proxy reads the spec
    field alone.
    """
    path = "spec.loadBalancerSourceRanges"
    raw = read_list(spec, "loadBalancerSourceRanges", path, MAX_UNBOUNDED_LIST)
    if raw and service_type is not ServiceType.LOAD_BALANCER:
        raise Invalid(path, "may only be used when type is LoadBalancer", RejectReason.FORBIDDEN)
    cidrs: dict[str, None] = {}
    for index, value in enumerate(raw):
        cidr = normalize_cidr_sloppy(value.strip() if type(value) is str else value)
        if cidr is None:
            raise Invalid(f"{path}[{index}]", f"not a CIDR: {describe(value)}",
                          RejectReason.INVALID_CIDR)
        cidrs[cidr] = None
    return tuple(cidrs)


def _external_policy(spec: Mapping[str, Any], externally_accessible: bool) -> TrafficPolicy:
    """externalTrafficPolicy: Cluster or Local, only for externally accessible services."""
    if not externally_accessible:
        raw = spec.get("externalTrafficPolicy")
        if raw not in _NO_VALUE:
            raise Invalid("spec.externalTrafficPolicy",
                          "may only be set for externally-accessible services",
                          RejectReason.FORBIDDEN)
        return TrafficPolicy.CLUSTER
    policy: TrafficPolicy = _enum(
        spec, "externalTrafficPolicy", _TRAFFIC_POLICIES, TrafficPolicy.CLUSTER
    )
    return policy


def _health_check_node_port(
    spec: Mapping[str, Any], needed: bool, problems: ObjectProblems
) -> int | None:
    """spec.healthCheckNodePort, only of a LoadBalancer service with externalTrafficPolicy
    Local (the API's ``NeedsHealthCheck``). Missing is reported, as kube-proxy logs it;
    the service itself is still programmed."""
    raw = spec.get("healthCheckNodePort")
    if raw is None or _is_zero(raw):
        if needed:
            problems.ignore("spec.healthCheckNodePort", "missing", RejectReason.MISSING)
        return None
    if not needed:
        raise Invalid("spec.healthCheckNodePort",
                      "may only be set when type is LoadBalancer and "
                      "externalTrafficPolicy is Local", RejectReason.FORBIDDEN)
    port = port_number(raw)
    if port is None:
        raise Invalid("spec.healthCheckNodePort", f"not a port number: {describe(raw)}",
                      RejectReason.INVALID_PORT)
    return port


def _session_affinity(spec: Mapping[str, Any]) -> tuple[SessionAffinity, int]:
    """sessionAffinity and its timeout: an absent timeout means 10800 s (the API default);
    with affinity None no sessionAffinityConfig is allowed, with ClientIP the timeout
    is 1-86400 s."""
    affinity: SessionAffinity = _enum(spec, "sessionAffinity", _AFFINITIES, SessionAffinity.NONE)
    config: object = spec.get("sessionAffinityConfig")
    path = "spec.sessionAffinityConfig"
    if affinity is SessionAffinity.NONE:
        if config is not None:
            raise Invalid(path, "must not be set when sessionAffinity is None",
                          RejectReason.FORBIDDEN)
        return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
    value = config
    for key in ("clientIP", "timeoutSeconds"):
        if value is None:
            return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
        if not is_object(value):
            raise Invalid(path, "not an object", RejectReason.WRONG_TYPE)
        value = value.get(key)
        path = f"{path}.{key}"
    if value is None:
        return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
    if type(value) is int and 0 < value <= MAX_AFFINITY_TIMEOUT_SECONDS:
        return affinity, value
    raise Invalid(path, f"not 1-{MAX_AFFINITY_TIMEOUT_SECONDS} seconds: {describe(value)}",
                  RejectReason.INVALID_VALUE)


def _traffic_distribution(spec: Mapping[str, Any]) -> str | None:
    """spec.trafficDistribution, one of the values the API server accepts; the planner
    decides which it honours, as kube-proxy's topology code does."""
    raw = spec.get("trafficDistribution")
    if raw is None:
        return None
    if type(raw) is str and raw in _TRAFFIC_DISTRIBUTIONS:
        return str(raw)
    raise Invalid("spec.trafficDistribution", f"unsupported value {describe(raw)}",
                  RejectReason.UNSUPPORTED_VALUE)


def _external_name(spec: Mapping[str, Any]) -> None:
    """spec.externalName of an ExternalName service: a DNS name, maybe with a final dot.
    kube-proxy never programs it; the API server requires it."""
    raw = spec.get("externalName")
    name = raw[:-1] if type(raw) is str and raw.endswith(".") else raw
    if name in _NO_VALUE:
        raise Invalid("spec.externalName", "missing", RejectReason.MISSING)
    if not is_dns1123_subdomain(name):
        raise Invalid("spec.externalName", f"not a DNS name: {describe(raw)}",
                      RejectReason.INVALID_NAME)


def _is_zero(value: object) -> bool:
    """The number 0 ("unset" for the API's int fields); JSON false is not a number."""
    return type(value) is int and value == 0
