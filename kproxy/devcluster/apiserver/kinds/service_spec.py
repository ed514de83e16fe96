"""What a Service spec means and must look like: its fields, defaults and validation."""

from __future__ import annotations

import ipaddress
from typing import Any

from kproxy.devcluster.apiserver.fields import ListOf, fields, top_level
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.validation import (
    FieldError,
    dns_label_problems,
    dns_subdomain_problems,
    duplicate,
    iana_service_name_problems,
    invalid,
    is_int,
    not_supported,
    parse_ip,
    required,
    validate_labels,
)

CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
LOAD_BALANCER = "LoadBalancer"
EXTERNAL_NAME = "ExternalName"
SERVICE_TYPES = (CLUSTER_IP, NODE_PORT, LOAD_BALANCER, EXTERNAL_NAME)
PROTOCOLS = ("TCP", "UDP", "SCTP")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
SINGLE_STACK = "SingleStack"
PREFER_DUAL_STACK = "PreferDualStack"
REQUIRE_DUAL_STACK = "RequireDualStack"
FAMILY_POLICIES = (SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK)
FAMILIES = ("IPv4", "IPv6")
HEADLESS = "None"
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
INVALID_IP = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"


SERVICE_FIELDS = top_level(
    spec=fields(
        "selector",
        "clusterIP",
        "clusterIPs",
        "type",
        "externalIPs",
        "sessionAffinity",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
        "externalName",
        "externalTrafficPolicy",
        "healthCheckNodePort",
        "publishNotReadyAddresses",
        "sessionAffinityConfig",
        "ipFamilies",
        "ipFamilyPolicy",
        "allocateLoadBalancerNodePorts",
        "loadBalancerClass",
        "internalTrafficPolicy",
        "trafficDistribution",
        ports=ListOf(fields("name", "protocol", "appProtocol", "port", "targetPort", "nodePort")),
    ),
    status=fields(
        "conditions",
        loadBalancer=fields(ingress=ListOf(fields("ip", "hostname", "ipMode", "ports"))),
    ),
)


def service_type(spec: JsonObject) -> str:
    return str(spec.get("type") or CLUSTER_IP)


def needs_cluster_ip(spec: JsonObject) -> bool:
    return service_type(spec) != EXTERNAL_NAME


def allows_node_ports(spec: JsonObject) -> bool:
    return service_type(spec) in (NODE_PORT, LOAD_BALANCER)


def allocates_node_ports(spec: JsonObject) -> bool:
    kind = service_type(spec)
    return kind == NODE_PORT or (
        kind == LOAD_BALANCER and spec.get("allocateLoadBalancerNodePorts") is not False
    )


def needs_health_check_port(spec: JsonObject) -> bool:
    return service_type(spec) == LOAD_BALANCER and spec.get("externalTrafficPolicy") == "Local"


def externally_accessible(spec: JsonObject) -> bool:
    return service_type(spec) in (NODE_PORT, LOAD_BALANCER) or bool(spec.get("externalIPs"))


def is_headless(spec: JsonObject) -> bool:
    return spec.get("clusterIP") == HEADLESS or (spec.get("clusterIPs") or [None])[0] == HEADLESS


def family_of(ip: str) -> str:
    return "IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6"


def service_ports(spec: JsonObject) -> list[JsonObject]:
    ports = spec.get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def apply_defaults(body: JsonObject, spec: JsonObject) -> None:
    """The defaults a real server fills in (type, affinity, protocols, policies...)."""
    spec.setdefault("type", CLUSTER_IP)
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {})
        if isinstance(config, dict):
            client_ip = config.setdefault("clientIP", {})
            if isinstance(client_ip, dict):
                client_ip.setdefault("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
    for port in service_ports(spec):
        port.setdefault("protocol", "TCP")
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if needs_cluster_ip(spec):
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if externally_accessible(spec) and service_type(spec) != CLUSTER_IP:
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if service_type(spec) == LOAD_BALANCER:
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    status = body.get("status")
    if not isinstance(status, dict):
        body["status"] = {"loadBalancer": {}}
    else:
        status.setdefault("loadBalancer", {})


def validate_spec(spec: JsonObject) -> list[FieldError]:
    errors: list[FieldError] = []
    kind = spec.get("type")
    if kind not in SERVICE_TYPES:
        errors.append(not_supported("spec.type", kind, list(SERVICE_TYPES)))
        return errors
    errors.extend(validate_ports(spec))
    if kind == EXTERNAL_NAME:
        name = spec.get("externalName")
        if not name:
            errors.append(required("spec.externalName"))
        elif not isinstance(name, str) or dns_subdomain_problems(name.rstrip(".")):
            errors.append(invalid("spec.externalName", name, "must be a valid DNS subdomain name"))
    elif not service_ports(spec) and not is_headless(spec):
        errors.append(required("spec.ports"))
    affinity = spec.get("sessionAffinity")
    if affinity not in AFFINITIES:
        errors.append(not_supported("spec.sessionAffinity", affinity, list(AFFINITIES)))
    elif affinity == "ClientIP":
        timeout = (
            (spec.get("sessionAffinityConfig") or {}).get("clientIP", {}).get("timeoutSeconds")
        )
        if not is_int(timeout) or not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
            errors.append(
                invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout,
                    f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}",
                )
            )
    for field in ("internalTrafficPolicy", "externalTrafficPolicy"):
        value = spec.get(field)
        if value is not None and value not in TRAFFIC_POLICIES:
            errors.append(not_supported(f"spec.{field}", value, list(TRAFFIC_POLICIES)))
    if spec.get("externalTrafficPolicy") is not None and not externally_accessible(spec):
        errors.append(
            invalid(
                "spec.externalTrafficPolicy",
                spec["externalTrafficPolicy"],
                "may only be set for externally-accessible services",
            )
        )
    external_ips = spec.get("externalIPs") or []
    if not isinstance(external_ips, list):
        errors.append(invalid("spec.externalIPs", external_ips, "must be a list"))
    else:
        for index, ip in enumerate(external_ips):
            if parse_ip(ip) is None:
                errors.append(invalid(f"spec.externalIPs[{index}]", ip, INVALID_IP))
    for index, cidr in enumerate(spec.get("loadBalancerSourceRanges") or []):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            errors.append(
                invalid(f"spec.loadBalancerSourceRanges[{index}]", cidr, "must be a CIDR")
            )
    errors.extend(validate_labels(spec.get("selector"), "spec.selector"))
    return errors


def validate_status(body: JsonObject) -> list[FieldError]:
    errors: list[FieldError] = []
    load_balancer = (body.get("status") or {}).get("loadBalancer") or {}
    ingress = load_balancer.get("ingress") if isinstance(load_balancer, dict) else None
    if ingress is None:
        return errors
    if not isinstance(ingress, list):
        return [invalid("status.loadBalancer.ingress", ingress, "must be a list")]
    for index, entry in enumerate(ingress):
        field = f"status.loadBalancer.ingress[{index}]"
        if not isinstance(entry, dict):
            errors.append(invalid(field, entry, "must be an object"))
            continue
        if "ip" in entry and parse_ip(entry["ip"]) is None:
            errors.append(invalid(f"{field}.ip", entry["ip"], INVALID_IP))
        mode = entry.get("ipMode")
        if mode is not None:
            if mode not in ("VIP", "Proxy"):
                errors.append(not_supported(f"{field}.ipMode", mode, ["Proxy", "VIP"]))
            elif "ip" not in entry:
                errors.append(required(f"{field}.ipMode", "must be specified with ip"))
    return errors


def validate_ports(spec: JsonObject) -> list[FieldError]:
    raw = spec.get("ports")
    if raw is None:
        return []
    if not isinstance(raw, list):
        return [invalid("spec.ports", raw, "must be a list")]
    errors: list[FieldError] = []
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    several = len(raw) > 1
    for index, port in enumerate(raw):
        field = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            errors.append(invalid(field, port, "must be an object"))
            continue
        name = port.get("name", "")
        if not isinstance(name, str):
            errors.append(invalid(f"{field}.name", name, "must be a string"))
        elif not name:
            if several:
                errors.append(required(f"{field}.name"))
        else:
            errors.extend(invalid(f"{field}.name", name, p) for p in dns_label_problems(name))
            if name in names:
                errors.append(duplicate(f"{field}.name", name))
            names.add(name)
        number = port.get("port")
        if number in (None, 0):
            errors.append(required(f"{field}.port"))
        elif not is_int(number) or not 1 <= number <= 65535:
            errors.append(
                invalid(f"{field}.port", number, "must be between 1 and 65535, inclusive")
            )
        protocol = port.get("protocol")
        if protocol not in PROTOCOLS:
            errors.append(not_supported(f"{field}.protocol", protocol, list(PROTOCOLS)))
        target = port.get("targetPort")
        if target == number and not (is_int(number) and 1 <= number <= 65535):
            pass  # defaulted from an invalid port, which is reported already
        elif isinstance(target, str):
            errors.extend(
                invalid(f"{field}.targetPort", target, p)
                for p in iana_service_name_problems(target)
            )
        elif not is_int(target) or not 1 <= target <= 65535:
            errors.append(
                invalid(f"{field}.targetPort", target, "must be between 1 and 65535, inclusive")
            )
        node_port = port.get("nodePort")
        if node_port not in (None, 0) and (not is_int(node_port) or not 1 <= node_port <= 65535):
            errors.append(
                invalid(f"{field}.nodePort", node_port, "must be between 1 and 65535, inclusive")
            )
        identity = (number, protocol)
        if identity in seen:
            errors.append(duplicate(field, {"port": number, "protocol": protocol}))
        seen.add(identity)
    return errors
