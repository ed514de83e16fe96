"""v1 Service objects -> ``ServiceInfo``, with kube-proxy's (1.33) semantics.

Skipped without a rejection (kube-proxy ignores these on purpose, they are not errors);
the result is a ``ServiceInfo`` with no ports, so an update into one of these states
removes the service's rules:

- objects labelled ``service.kubernetes.io/headless``, or labelled
  ``service.kubernetes.io/service-proxy-name`` with a value other than this proxy's name
  (kube-proxy filters both with a server-side label selector);
- headless services (``clusterIP: None``) and services with no cluster IP yet, and
  ``type: ExternalName`` (kube-proxy's ``ShouldSkipService``).

Rejected whole (``whole_object=True``): not a mapping, no usable metadata, ``spec`` or
``spec.ports`` of the wrong shape, a cluster IP that is not an IP address.

Rejected in part, the rest still programmed: one bad port entry (name, protocol or port)
drops that port; one bad external IP, load-balancer ingress IP or source range drops that
value; a bad nodePort or healthCheckNodePort drops that node port; unknown enum values fall
back to the API default. Details are in each helper's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kproxy.model.addresses import ip_family, normalize_cidr, normalize_ip
from kproxy.model.labels import service_selected
from kproxy.model.objectmeta import (
    MAX_PORT_NAME_LENGTH,
    ObjectProblems,
    describe,
    is_object,
    port_number,
    read_metadata,
    read_port_identity,
)
from kproxy.model.types import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    IPFamily,
    Parsed,
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)

KIND: Final = "Service"
MAX_TARGET_PORT_NAME_LENGTH: Final = 15  # IANA_SVC_NAME
MAX_AFFINITY_TIMEOUT_SECONDS: Final = 86400  # API validation's upper bound (one day)

_SERVICE_TYPES: Final[Mapping[object, ServiceType]] = {t.value: t for t in ServiceType}
_NODE_PORT_TYPES: Final = frozenset({ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER})
_TRAFFIC_POLICIES: Final[Mapping[object, TrafficPolicy]] = {p.value: p for p in TrafficPolicy}
_AFFINITIES: Final[Mapping[object, SessionAffinity]] = {a.value: a for a in SessionAffinity}
_NO_VALUE: Final = (None, "")

def parse_service(obj: Mapping[str, Any], *, proxy_name: str = "") -> Parsed[ServiceInfo]:
    """Parse one v1 Service as kube-proxy would see it; never raises.

    ``proxy_name`` is this proxy's ``service.kubernetes.io/service-proxy-name`` ("" for the
    default proxy, which serves only unlabelled services).
    """
    meta = read_metadata(obj, KIND, namespaced=True)
    if isinstance(meta, Parsed):
        return meta
    problems = ObjectProblems(KIND, meta.namespace, meta.name)
    unserved = ServiceInfo(meta.namespace, meta.name)
    if not service_selected(meta.labels, proxy_name):
        return Parsed(unserved)
    spec = obj.get("spec")
    if not is_object(spec):
        return problems.drop("spec", "missing or not an object")

    service_type = _service_type(spec, problems)
    if service_type is ServiceType.EXTERNAL_NAME:
        return problems.result(unserved)
    cluster_ips = _cluster_ips(spec, problems)
    if cluster_ips is None:
        return Parsed(None, tuple(problems.rejections))
    if not cluster_ips:
        return problems.result(unserved)
    raw_ports = spec.get("ports")
    if raw_ports is None:
        raw_ports = ()
    elif not isinstance(raw_ports, list):
        return problems.drop("spec.ports", "not a list")

    raw_external_ips = spec.get("externalIPs")
    external_ips = _ip_list(raw_external_ips, "spec.externalIPs", problems)
    status = obj.get("status")
    load_balancer_ips = _load_balancer_ips(status, problems)
    source_ranges = _source_ranges(spec, problems)
    # kube-proxy's ExternalPolicyLocal: NodePort and LoadBalancer services, and ClusterIP
    # services with external IPs, are externally accessible.
    externally_accessible = service_type in _NODE_PORT_TYPES or (
        service_type is ServiceType.CLUSTER_IP
        and isinstance(raw_external_ips, list)
        and len(raw_external_ips) > 0
    )
    external_policy = _traffic_policy(spec, "externalTrafficPolicy", problems)
    if not externally_accessible:
        external_policy = TrafficPolicy.CLUSTER
    internal_policy = _traffic_policy(spec, "internalTrafficPolicy", problems)
    health_check_node_port = None
    if service_type is ServiceType.LOAD_BALANCER and external_policy is TrafficPolicy.LOCAL:
        health_check_node_port = _health_check_node_port(spec, problems)
    affinity, affinity_timeout = _session_affinity(spec, problems)
    traffic_distribution = _traffic_distribution(spec, problems)

    ports: dict[ServicePortName, ServicePort] = {}
    first_index: dict[ServicePortName, int] = {}
    takes_node_port = service_type in _NODE_PORT_TYPES
    for index, raw_port in enumerate(raw_ports):
        path = f"spec.ports[{index}]"
        fields = _port_fields(raw_port, path, takes_node_port, problems)
        if fields is None:
            continue
        port_name, protocol, port, target_port, node_port = fields
        name = ServicePortName(meta.namespace, meta.name, port_name, protocol)
        if name in ports:
            # kube-proxy keys its map by name and protocol: the later entry replaces the
            # earlier one (the API server forbids duplicate names, so this is a bad object).
            problems.ignore(
                f"spec.ports[{first_index[name]}]",
                f"same name and protocol as {path}, which replaces it (as in kube-proxy)",
            )
            del ports[name]
        first_index[name] = index
        ports[name] = ServicePort(
            name,
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
    return problems.result(ServiceInfo(meta.namespace, meta.name, tuple(ports.values())))


def _service_type(spec: Mapping[str, Any], problems: ObjectProblems) -> ServiceType:
    """spec.type; absent means ClusterIP (the API default).

    An unknown type is reported and treated as ClusterIP: kube-proxy has no type switch
    for the cluster IP itself, so the cluster IP keeps working.
    """
    raw = spec.get("type")
    if raw in _NO_VALUE:
        return ServiceType.CLUSTER_IP
    service_type = _SERVICE_TYPES.get(raw) if type(raw) is str else None
    if service_type is None:
        problems.ignore("spec.type", f"unknown service type {describe(raw)}; using ClusterIP")
        return ServiceType.CLUSTER_IP
    return service_type


def _cluster_ips(spec: Mapping[str, Any], problems: ObjectProblems) -> tuple[str, ...] | None:
    """Normalised cluster IPs, at most one per family, primary first.

    ``()`` for a headless service or one without a cluster IP (skipped, as kube-proxy's
    ``ShouldSkipService`` does); None (with a whole-object rejection) when any entry is not
    an IP: kube-proxy would program garbage, we program nothing. ``spec.clusterIPs`` wins
    over the legacy ``spec.clusterIP``, which the API server keeps equal to its first entry.
    A second IP of an already seen family (invalid in the API) is ignored.
    """
    raw = spec.get("clusterIPs")
    path = "spec.clusterIPs"
    if raw is None or raw == []:
        single = spec.get("clusterIP")
        raw = [] if single is None else [single]
        path = "spec.clusterIP"
    elif not isinstance(raw, list):
        problems.drop(path, "not a list")
        return None
    if not raw or raw[0] in ("", "None"):
        return ()
    ips: list[str] = []
    families: set[IPFamily] = set()
    for index, value in enumerate(raw):
        field = path if path == "spec.clusterIP" else f"{path}[{index}]"
        ip = normalize_ip(value)
        if ip is None:
            problems.drop(field, f"not an IP address: {describe(value)}")
            return None
        family = ip_family(ip)
        if family in families:
            problems.ignore(field, f"a second {family.value} cluster IP; using the first")
            continue
        families.add(family)
        ips.append(ip)
    return tuple(ips)


def _port_fields(
    raw: object, path: str, takes_node_port: bool, problems: ObjectProblems
) -> tuple[str, Protocol, int, int | str, int | None] | None:
    """(name, protocol, port, targetPort, nodePort) of one spec.ports entry, or None.

    A bad name, protocol or port drops the entry: it cannot be identified or programmed.
    A bad targetPort is only reported (kube-proxy never uses it: endpoints carry the real
    port) and replaced by the port, the API default. nodePort counts only for NodePort and
    LoadBalancer services; 0 or absent means none (allocateLoadBalancerNodePorts: false);
    a bad one is dropped while the cluster IP part of the port keeps working.
    """
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
        problems.ignore(f"{path}.port", f"not a port number (1-65535): {describe(raw_port)}")
        return None
    raw_target = raw.get("targetPort")
    target_port = port if raw_target is None else _target_port(raw_target)
    if target_port is None:
        problems.ignore(f"{path}.targetPort", f"not a port number or name: {describe(raw_target)}")
        target_port = port
    node_port = None
    raw_node_port = raw.get("nodePort")
    if raw_node_port is not None and raw_node_port != 0:
        if not takes_node_port:
            problems.ignore(f"{path}.nodePort", "only NodePort and LoadBalancer services")
        else:
            node_port = port_number(raw_node_port)
            if node_port is None:
                problems.ignore(
                    f"{path}.nodePort", f"not a port number (1-65535): {describe(raw_node_port)}"
                )
    return name, protocol, port, target_port, node_port


def _target_port(raw: object) -> int | str | None:
    if type(raw) is str:
        return raw if 0 < len(raw) <= MAX_TARGET_PORT_NAME_LENGTH else None
    return port_number(raw)


def _ip_list(raw: object, path: str, problems: ObjectProblems) -> tuple[str, ...]:
    """Normalised, de-duplicated IPs of both families (the planner filters per family,
    as kube-proxy's proxier does); entries that are not IPs are dropped one by one."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.ignore(path, "not a list")
        return ()
    ips: dict[str, None] = {}
    for index, value in enumerate(raw):
        ip = normalize_ip(value)
        if ip is None:
            problems.ignore(f"{path}[{index}]", f"not an IP address: {describe(value)}")
        else:
            ips[ip] = None
    return tuple(ips)


def _load_balancer_ips(status: object, problems: ObjectProblems) -> tuple[str, ...]:
    """status.loadBalancer.ingress[].ip of VIP-mode ingresses.

    As kube-proxy's ``IsVIPMode``: ipMode absent or ``VIP`` is programmed, ``Proxy`` means
    the load balancer forwards to node ports itself and is skipped without a rejection.
    Hostname-only ingresses are skipped likewise; the service type is not consulted.
    """
    if status is None:
        return ()
    if not is_object(status):
        problems.ignore("status", "not an object")
        return ()
    load_balancer = status.get("loadBalancer")
    if load_balancer is None:
        return ()
    if not is_object(load_balancer):
        problems.ignore("status.loadBalancer", "not an object")
        return ()
    ingress = load_balancer.get("ingress")
    if ingress is None:
        return ()
    if not isinstance(ingress, list):
        problems.ignore("status.loadBalancer.ingress", "not a list")
        return ()
    ips: dict[str, None] = {}
    for index, entry in enumerate(ingress):
        path = f"status.loadBalancer.ingress[{index}]"
        if not is_object(entry):
            problems.ignore(path, "not an object")
            continue
        raw_ip = entry.get("ip")
        if raw_ip in _NO_VALUE:
            continue
        mode = entry.get("ipMode")
        if mode == "Proxy":
            continue
        if mode is not None and mode != "VIP":
            problems.ignore(f"{path}.ipMode", f"unknown ipMode {describe(mode)}")
            continue
        ip = normalize_ip(raw_ip)
        if ip is None:
            problems.ignore(f"{path}.ip", f"not an IP address: {describe(raw_ip)}")
        else:
            ips[ip] = None
    return tuple(ips)


def _source_ranges(spec: Mapping[str, Any], problems: ObjectProblems) -> tuple[str, ...]:
    """spec.loadBalancerSourceRanges as normalised CIDRs (host bits cleared).

    Surrounding whitespace is trimmed, as kube-proxy does (API validation lets it
    through); CIDRs that do not parse are dropped one by one, as in kube-proxy. The
    ``service.beta.kubernetes.io/load-balancer-source-ranges`` annotation is NOT read:
    only cloud providers honour it, kube-proxy programs the spec field alone.
    """
    raw = spec.get("loadBalancerSourceRanges")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.ignore("spec.loadBalancerSourceRanges", "not a list")
        return ()
    cidrs: dict[str, None] = {}
    for index, value in enumerate(raw):
        cidr = normalize_cidr(value.strip() if type(value) is str else value)
        if cidr is None:
            problems.ignore(
                f"spec.loadBalancerSourceRanges[{index}]", f"not a CIDR: {describe(value)}"
            )
        else:
            cidrs[cidr] = None
    return tuple(cidrs)


def _traffic_policy(spec: Mapping[str, Any], key: str, problems: ObjectProblems) -> TrafficPolicy:
    """externalTrafficPolicy / internalTrafficPolicy; absent or unknown means Cluster."""
    raw = spec.get(key)
    if raw in _NO_VALUE:
        return TrafficPolicy.CLUSTER
    policy = _TRAFFIC_POLICIES.get(raw) if type(raw) is str else None
    if policy is None:
        problems.ignore(f"spec.{key}", f"unknown policy {describe(raw)}; using Cluster")
        return TrafficPolicy.CLUSTER
    return policy


def _health_check_node_port(spec: Mapping[str, Any], problems: ObjectProblems) -> int | None:
    """spec.healthCheckNodePort of a LoadBalancer service with externalTrafficPolicy Local
    (kube-proxy's ``NeedsHealthCheck``: NodePort services get none). Missing is reported,
    as kube-proxy logs it; the service itself is still programmed."""
    raw = spec.get("healthCheckNodePort")
    port = port_number(raw)
    if port is None:
        reason = "missing" if raw in (None, 0) else f"not a port number: {describe(raw)}"
        problems.ignore("spec.healthCheckNodePort", reason)
    return port


def _session_affinity(
    spec: Mapping[str, Any], problems: ObjectProblems
) -> tuple[SessionAffinity, int]:
    """sessionAffinity and its timeout: absent timeout means 10800 s (the API default),
    outside 1..86400 s is reported and replaced by the default; unknown affinity is None."""
    raw = spec.get("sessionAffinity")
    if raw in _NO_VALUE:
        return SessionAffinity.NONE, DEFAULT_AFFINITY_TIMEOUT_SECONDS
    affinity = _AFFINITIES.get(raw) if type(raw) is str else None
    if affinity is None:
        problems.ignore("spec.sessionAffinity", f"unknown affinity {describe(raw)}; using None")
        return SessionAffinity.NONE, DEFAULT_AFFINITY_TIMEOUT_SECONDS
    if affinity is SessionAffinity.NONE:
        return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
    path = "spec.sessionAffinityConfig"
    value: object = spec.get("sessionAffinityConfig")
    for key in ("clientIP", "timeoutSeconds"):
        if value is None:
            return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
        if not is_object(value):
            problems.ignore(path, "not an object")
            return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
        value = value.get(key)
        path = f"{path}.{key}"
    if value is None:
        return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS
    if type(value) is int and 0 < value <= MAX_AFFINITY_TIMEOUT_SECONDS:
        return affinity, value
    problems.ignore(
        path,
        f"not 1-{MAX_AFFINITY_TIMEOUT_SECONDS} seconds: {describe(value)}; "
        f"using {DEFAULT_AFFINITY_TIMEOUT_SECONDS}",
    )
    return affinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS


def _traffic_distribution(spec: Mapping[str, Any], problems: ObjectProblems) -> str | None:
    """spec.trafficDistribution, kept as given (PreferClose, PreferSameZone, ...): the
    planner decides which values it honours, as kube-proxy's topology code does."""
    raw = spec.get("trafficDistribution")
    if raw in _NO_VALUE:
        return None
    if type(raw) is str and len(raw) <= MAX_PORT_NAME_LENGTH:
        return raw
    problems.ignore("spec.trafficDistribution", f"not a distribution name: {describe(raw)}")
    return None

