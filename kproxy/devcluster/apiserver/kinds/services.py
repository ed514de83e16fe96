"""Services: the defaults, validation and ClusterIP/NodePort allocation a real server applies.

On update, values the client left out are carried over from the stored object (clusterIPs,
nodePorts by port name), and fields that a type change makes meaningless are dropped when
the client did not change them (a NodePort Service turned ClusterIP loses its nodePorts), so
that ``kubectl apply`` and read-modify-write clients behave as against a real cluster.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from kproxy.devcluster.apiserver.allocators import (
    AllocationError,
    IPAllocator,
    PortAllocator,
    Reservations,
)
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.patch import ListMerge
from kproxy.devcluster.apiserver.resources import SERVICES
from kproxy.devcluster.apiserver.validation import (
    FieldError,
    dns_1035_label_problems,
    dns_label_problems,
    dns_subdomain_problems,
    duplicate,
    forbidden,
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


@dataclass
class ServiceNetwork:
    """The cluster's service CIDRs (primary family first) and node port range."""

    cluster_ips: list[IPAllocator]
    node_ports: PortAllocator

    @property
    def families(self) -> list[str]:
        return [allocator.family for allocator in self.cluster_ips]

    @property
    def dual_stack(self) -> bool:
        return len(self.cluster_ips) > 1

    def allocator_for(self, family: str) -> IPAllocator | None:
        return next((a for a in self.cluster_ips if a.family == family), None)


def _type(spec: JsonObject) -> str:
    return str(spec.get("type") or CLUSTER_IP)


def needs_cluster_ip(spec: JsonObject) -> bool:
    return _type(spec) != EXTERNAL_NAME


def allows_node_ports(spec: JsonObject) -> bool:
    return _type(spec) in (NODE_PORT, LOAD_BALANCER)


def allocates_node_ports(spec: JsonObject) -> bool:
    kind = _type(spec)
    return kind == NODE_PORT or (
        kind == LOAD_BALANCER and spec.get("allocateLoadBalancerNodePorts") is not False
    )


def needs_health_check_port(spec: JsonObject) -> bool:
    return _type(spec) == LOAD_BALANCER and spec.get("externalTrafficPolicy") == "Local"


def externally_accessible(spec: JsonObject) -> bool:
    return _type(spec) in (NODE_PORT, LOAD_BALANCER) or bool(spec.get("externalIPs"))


def is_headless(spec: JsonObject) -> bool:
    return spec.get("clusterIP") == HEADLESS or (spec.get("clusterIPs") or [None])[0] == HEADLESS


def _family(ip: str) -> str:
    return "IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6"


def _ports(spec: JsonObject) -> list[JsonObject]:
    ports = spec.get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def _held_node_ports(spec: JsonObject | None) -> set[int]:
    if spec is None or not allows_node_ports(spec):
        return set()
    return {p["nodePort"] for p in _ports(spec) if is_int(p.get("nodePort")) and p["nodePort"]}


def _held_cluster_ips(spec: JsonObject | None) -> list[str]:
    if spec is None or not needs_cluster_ip(spec) or is_headless(spec):
        return []
    return [ip for ip in spec.get("clusterIPs") or [] if isinstance(ip, str) and parse_ip(ip)]


def _held_health_check_port(spec: JsonObject | None) -> int | None:
    if spec is None or not needs_health_check_port(spec):
        return None
    port = spec.get("healthCheckNodePort")
    return port if is_int(port) and port else None


class ServiceRules(KindRules):
    generation_fields = ("spec",)
    patch_lists = {
        "spec.ports": ListMerge("port"),
        "status.conditions": ListMerge("type"),
    }

    def __init__(self, network: ServiceNetwork) -> None:
        super().__init__(SERVICES)
        self.network = network

    def name_problems(self, name: str) -> list[str]:
        return dns_1035_label_problems(name)

    # --- writes ----------------------------------------------------------------------------

    def prepare_create(self, body: JsonObject, reservations: Reservations) -> list[FieldError]:
        spec = body.get("spec")
        if not isinstance(spec, dict):
            spec = body["spec"] = {}
        self._apply_defaults(body, spec)
        errors = self._validate_spec(spec) + self.validate_status(body)
        if errors:
            return errors
        return self._allocate(spec, None, reservations)

    def prepare_update(
        self, body: JsonObject, old: JsonObject, reservations: Reservations
    ) -> list[FieldError]:
        spec = body.get("spec")
        if not isinstance(spec, dict):
            spec = body["spec"] = {}
        old_spec: JsonObject = old.get("spec") or {}
        spec.setdefault("type", CLUSTER_IP)
        _drop_type_dependent_fields(spec, old_spec)
        _carry_over_allocated_values(spec, old_spec)
        self._apply_defaults(body, spec)
        errors = self._validate_spec(spec)
        if errors:
            return errors
        return self._allocate(spec, old_spec, reservations)

    def release(self, old: JsonObject, reservations: Reservations) -> None:
        spec = old.get("spec") or {}
        for ip in _held_cluster_ips(spec):
            allocator = self.network.allocator_for(_family(ip))
            if allocator is not None and allocator.contains(ip):
                reservations.give_back_ip(allocator, ip)
        for port in _held_node_ports(spec):
            reservations.give_back_port(self.network.node_ports, port)
        health_port = _held_health_check_port(spec)
        if health_port is not None:
            reservations.give_back_port(self.network.node_ports, health_port)

    def restore(self, body: JsonObject) -> None:
        spec = body.get("spec") or {}
        for ip in _held_cluster_ips(spec):
            allocator = self.network.allocator_for(_family(ip))
            if allocator is not None:
                allocator.mark_used(ip)
        for port in _held_node_ports(spec):
            self.network.node_ports.mark_used(port)
        health_port = _held_health_check_port(spec)
        if health_port is not None:
            self.network.node_ports.mark_used(health_port)

    # --- defaults and validation -----------------------------------------------------------

    def _apply_defaults(self, body: JsonObject, spec: JsonObject) -> None:
        spec.setdefault("type", CLUSTER_IP)
        spec.setdefault("sessionAffinity", "None")
        if spec["sessionAffinity"] == "ClientIP":
            config = spec.setdefault("sessionAffinityConfig", {})
            if isinstance(config, dict):
                client_ip = config.setdefault("clientIP", {})
                if isinstance(client_ip, dict):
                    client_ip.setdefault("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        for port in _ports(spec):
            port.setdefault("protocol", "TCP")
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")
        if needs_cluster_ip(spec):
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if externally_accessible(spec) and _type(spec) != CLUSTER_IP:
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if _type(spec) == LOAD_BALANCER:
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        status = body.get("status")
        if not isinstance(status, dict):
            body["status"] = {"loadBalancer": {}}
        else:
            status.setdefault("loadBalancer", {})

    def _validate_spec(self, spec: JsonObject) -> list[FieldError]:
        errors: list[FieldError] = []
        kind = spec.get("type")
        if kind not in SERVICE_TYPES:
            errors.append(not_supported("spec.type", kind, list(SERVICE_TYPES)))
            return errors
        errors.extend(_validate_ports(spec))
        if kind == EXTERNAL_NAME:
            name = spec.get("externalName")
            if not name:
                errors.append(required("spec.externalName"))
            elif not isinstance(name, str) or dns_subdomain_problems(name.rstrip(".")):
                errors.append(
                    invalid("spec.externalName", name, "must be a valid DNS subdomain name")
                )
        elif not _ports(spec) and not is_headless(spec):
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

    def validate_status(self, body: JsonObject) -> list[FieldError]:
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

    # --- allocation ------------------------------------------------------------------------

    def _allocate(
        self, spec: JsonObject, old_spec: JsonObject | None, reservations: Reservations
    ) -> list[FieldError]:
        errors = self._assign_cluster_ips(spec, old_spec, reservations)
        if errors:
            return errors
        errors = self._assign_node_ports(spec, old_spec, reservations)
        if errors:
            return errors
        return self._assign_health_check_port(spec, old_spec, reservations)

    def _assign_cluster_ips(
        self, spec: JsonObject, old_spec: JsonObject | None, reservations: Reservations
    ) -> list[FieldError]:
        old_ips = _held_cluster_ips(old_spec)
        if not needs_cluster_ip(spec):
            if spec.get("clusterIP") or spec.get("clusterIPs"):
                return [
                    invalid(
                        "spec.clusterIPs",
                        spec.get("clusterIPs") or [spec.get("clusterIP")],
                        "may not be set for ExternalName services",
                    )
                ]
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(field, None)
            self._give_back_ips(old_ips, [], reservations)
            return []

        plan = _plan_families(spec, self.network)
        if isinstance(plan, list):
            return plan
        requested, families, policy = plan
        headless = requested[:1] == [HEADLESS]

        if old_spec is not None and needs_cluster_ip(old_spec):
            old_primary = (old_spec.get("clusterIPs") or [old_spec.get("clusterIP")])[0]
            new_primary = requested[0] if requested else None
            if new_primary != old_primary and old_primary:
                return [invalid("spec.clusterIPs[0]", new_primary or "", "may not change once set")]
            old_families = old_spec.get("ipFamilies") or []
            if old_families and families[:1] != old_families[:1]:
                return [invalid("spec.ipFamilies[0]", families[0], "may not change once set")]

        if headless:
            spec["clusterIP"] = HEADLESS
            spec["clusterIPs"] = [HEADLESS]
        else:
            assigned: list[str] = []
            errors: list[FieldError] = []
            for index, family in enumerate(families):
                wanted = requested[index] if index < len(requested) else None
                if wanted is not None and wanted in old_ips:
                    assigned.append(wanted)
                    continue
                allocator = self.network.allocator_for(family)
                if allocator is None:  # checked by _plan_families
                    continue
                try:
                    assigned.append(reservations.take_ip(allocator, wanted))
                except AllocationError as error:
                    if error.range_full:
                        raise _internal_error(str(error)) from None
                    errors.append(invalid(f"spec.clusterIPs[{index}]", wanted, str(error)))
            if errors:
                return errors
            self._give_back_ips(old_ips, assigned, reservations)
            spec["clusterIP"] = assigned[0]
            spec["clusterIPs"] = assigned
        spec["ipFamilies"] = families
        spec["ipFamilyPolicy"] = policy
        return []

    def _give_back_ips(self, old: list[str], kept: list[str], reservations: Reservations) -> None:
        for ip in old:
            if ip in kept:
                continue
            allocator = self.network.allocator_for(_family(ip))
            if allocator is not None and allocator.contains(ip):
                reservations.give_back_ip(allocator, ip)

    def _assign_node_ports(
        self, spec: JsonObject, old_spec: JsonObject | None, reservations: Reservations
    ) -> list[FieldError]:
        node_ports = self.network.node_ports
        held = _held_node_ports(old_spec)
        allowed = allows_node_ports(spec)
        automatic = allocates_node_ports(spec)
        errors: list[FieldError] = []
        protocols_by_node_port: dict[int, set[str]] = {}
        unassigned: list[JsonObject] = []
        for index, port in enumerate(_ports(spec)):
            node_port = port.get("nodePort")
            if node_port in (None, 0):
                port.pop("nodePort", None)
                if automatic:
                    unassigned.append(port)
                continue
            field = f"spec.ports[{index}].nodePort"
            if not is_int(node_port):
                errors.append(invalid(field, node_port, "must be an integer"))
                continue
            if not allowed:
                errors.append(forbidden(field, f"may not be used when `type` is '{_type(spec)}'"))
                continue
            protocols = protocols_by_node_port.setdefault(node_port, set())
            if port.get("protocol") in protocols:
                errors.append(duplicate(field, node_port))
                continue
            first_use = not protocols
            protocols.add(str(port.get("protocol")))
            if not first_use or node_port in held:
                continue
            try:
                reservations.take_port(node_ports, node_port)
            except AllocationError as error:
                if error.range_full:
                    raise _internal_error(str(error)) from None
                errors.append(invalid(field, node_port, str(error)))
        if errors:
            return errors
        # Ports that share a number (DNS on 53/TCP and 53/UDP) share one node port.
        by_service_port: dict[Any, int] = {}
        for port in unassigned:
            shared = by_service_port.get(port.get("port"))
            if shared is not None and port.get("protocol") not in protocols_by_node_port[shared]:
                port["nodePort"] = shared
                protocols_by_node_port[shared].add(str(port.get("protocol")))
                continue
            try:
                allocated = reservations.take_port(node_ports, None)
            except AllocationError as error:
                raise _internal_error(str(error)) from None
            port["nodePort"] = allocated
            protocols_by_node_port[allocated] = {str(port.get("protocol"))}
            by_service_port[port.get("port")] = allocated
        for port_number in held - set(protocols_by_node_port):
            reservations.give_back_port(node_ports, port_number)
        return []

    def _assign_health_check_port(
        self, spec: JsonObject, old_spec: JsonObject | None, reservations: Reservations
    ) -> list[FieldError]:
        node_ports = self.network.node_ports
        held = _held_health_check_port(old_spec)
        wanted = spec.get("healthCheckNodePort")
        if not needs_health_check_port(spec):
            if wanted:
                return [
                    invalid(
                        "spec.healthCheckNodePort",
                        wanted,
                        "may only be set when `type` is 'LoadBalancer' and "
                        "`externalTrafficPolicy` is 'Local'",
                    )
                ]
            spec.pop("healthCheckNodePort", None)
        elif wanted in (None, 0):
            try:
                spec["healthCheckNodePort"] = held or reservations.take_port(node_ports, None)
            except AllocationError as error:
                raise _internal_error(str(error)) from None
        elif wanted != held:
            if not is_int(wanted):
                return [invalid("spec.healthCheckNodePort", wanted, "must be an integer")]
            if wanted in _held_node_ports(spec):
                return [duplicate("spec.healthCheckNodePort", wanted)]
            try:
                reservations.take_port(node_ports, wanted)
            except AllocationError as error:
                return [invalid("spec.healthCheckNodePort", wanted, str(error))]
        if held is not None and spec.get("healthCheckNodePort") != held:
            reservations.give_back_port(node_ports, held)
        return []


def _internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def _validate_ports(spec: JsonObject) -> list[FieldError]:
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


def _plan_families(
    spec: JsonObject, network: ServiceNetwork
) -> tuple[list[str], list[str], str] | list[FieldError]:
    """The requested clusterIPs, the final ipFamilies and ipFamilyPolicy, or what is wrong."""
    errors: list[FieldError] = []
    cluster_ip = spec.get("clusterIP") or ""
    cluster_ips = list(spec.get("clusterIPs") or [])
    if cluster_ip and not cluster_ips:
        cluster_ips = [cluster_ip]
    elif cluster_ips and not cluster_ip:
        cluster_ip = cluster_ips[0]
    elif cluster_ip and cluster_ips and cluster_ips[0] != cluster_ip:
        return [invalid("spec.clusterIPs", cluster_ips, "element [0] must match clusterIP")]
    headless = cluster_ip == HEADLESS
    if headless and len(cluster_ips) > 1:
        return [
            invalid("spec.clusterIPs", cluster_ips, "must have one element when clusterIP is None")
        ]
    if len(cluster_ips) > 2:
        return [invalid("spec.clusterIPs", cluster_ips, "may only hold up to 2 values")]

    ip_families: list[str] = []
    if not headless:
        for index, ip in enumerate(cluster_ips):
            parsed = parse_ip(ip)
            if parsed is None or str(parsed) != ip:
                errors.append(invalid(f"spec.clusterIPs[{index}]", ip, INVALID_IP))
                continue
            family = _family(ip)
            if network.allocator_for(family) is None:
                errors.append(
                    invalid(
                        f"spec.clusterIPs[{index}]",
                        ip,
                        f"{family} is not configured on this cluster",
                    )
                )
            if family in ip_families:
                errors.append(
                    invalid(
                        f"spec.clusterIPs[{index}]",
                        ip,
                        "may not have the same IP family as another entry",
                    )
                )
            ip_families.append(family)
    if errors:
        return errors

    given = spec.get("ipFamilies") or []
    if not isinstance(given, list) or len(given) > 2:
        return [invalid("spec.ipFamilies", given, "may only hold up to 2 values")]
    families: list[str] = []
    for index, family in enumerate(given):
        if family not in FAMILIES:
            errors.append(not_supported(f"spec.ipFamilies[{index}]", family, list(FAMILIES)))
        elif family in families:
            errors.append(duplicate(f"spec.ipFamilies[{index}]", family))
        elif network.allocator_for(family) is None:
            errors.append(
                invalid(f"spec.ipFamilies[{index}]", family, "not configured on this cluster")
            )
        elif index < len(ip_families) and ip_families[index] != family:
            errors.append(
                invalid(
                    f"spec.ipFamilies[{index}]",
                    family,
                    f"must match the family of spec.clusterIPs[{index}]",
                )
            )
        families.append(family)
    if errors:
        return errors
    for family in ip_families[len(families) :]:
        families.append(family)

    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in FAMILY_POLICIES:
        return [not_supported("spec.ipFamilyPolicy", policy, list(FAMILY_POLICIES))]
    if headless and not spec.get("selector") and policy is None:
        # Headless Services without selectors get every family the cluster has.
        policy = REQUIRE_DUAL_STACK
        for family in network.families:
            if family not in families:
                families.append(family)
        return cluster_ips, families, policy
    if policy is None:
        policy = REQUIRE_DUAL_STACK if len(families) > 1 else SINGLE_STACK
    if policy == SINGLE_STACK and len(families) > 1:
        return [
            invalid(
                "spec.ipFamilyPolicy",
                policy,
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families "
                "are specified",
            )
        ]
    if policy == REQUIRE_DUAL_STACK and not network.dual_stack:
        return [
            invalid(
                "spec.ipFamilyPolicy",
                policy,
                "this cluster is not configured for dual-stack services",
            )
        ]
    if not families:
        families.append(network.families[0])
    if policy != SINGLE_STACK and network.dual_stack and len(families) == 1:
        families.extend(f for f in network.families if f not in families)
    return cluster_ips, families, policy


def _drop_type_dependent_fields(spec: JsonObject, old: JsonObject) -> None:
    """Forget what a type change makes meaningless, where the client left it unchanged."""
    if needs_cluster_ip(old) and not needs_cluster_ip(spec):
        same_ips = (spec.get("clusterIPs") or [spec.get("clusterIP")]) in (
            old.get("clusterIPs"),
            [old.get("clusterIP")],
            [None],
            [""],
        )
        if same_ips:
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(field, None)
    if allows_node_ports(old) and not allows_node_ports(spec):
        old_node_ports = _held_node_ports(old)
        for port in _ports(spec):
            if port.get("nodePort") in old_node_ports:
                port.pop("nodePort")
    if _type(old) == LOAD_BALANCER and _type(spec) != LOAD_BALANCER:
        for field in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if spec.get(field) == old.get(field):
                spec.pop(field, None)
    if not needs_health_check_port(spec) and spec.get("healthCheckNodePort") == old.get(
        "healthCheckNodePort"
    ):
        spec.pop("healthCheckNodePort", None)
    if not externally_accessible(spec) and spec.get("externalTrafficPolicy") == old.get(
        "externalTrafficPolicy"
    ):
        spec.pop("externalTrafficPolicy", None)


def _carry_over_allocated_values(spec: JsonObject, old: JsonObject) -> None:
    """Keep what the server assigned when an update leaves it out (read-modify-write clients
    and ``kubectl apply`` never send the clusterIP or nodePorts they did not choose)."""
    if needs_cluster_ip(old) and needs_cluster_ip(spec):
        if not spec.get("clusterIP") and not spec.get("clusterIPs"):
            if "clusterIP" in old:
                spec["clusterIP"] = old["clusterIP"]
            if "clusterIPs" in old:
                spec["clusterIPs"] = list(old["clusterIPs"])
        if not spec.get("ipFamilies") and old.get("ipFamilies"):
            spec["ipFamilies"] = list(old["ipFamilies"])
        if not spec.get("ipFamilyPolicy") and old.get("ipFamilyPolicy"):
            spec["ipFamilyPolicy"] = old["ipFamilyPolicy"]
        if spec.get("ipFamilyPolicy") == SINGLE_STACK:
            # Downgrading a dual-stack Service: the secondary address and family go away.
            if spec.get("clusterIPs") == old.get("clusterIPs"):
                spec["clusterIPs"] = list(spec.get("clusterIPs") or [])[:1]
            if spec.get("ipFamilies") == old.get("ipFamilies"):
                spec["ipFamilies"] = list(spec.get("ipFamilies") or [])[:1]
    if allows_node_ports(old) and allows_node_ports(spec):
        new_ports = _ports(spec)
        in_use = {p.get("nodePort") for p in new_ports if p.get("nodePort")}
        old_by_name = {p.get("name", ""): p.get("nodePort") for p in _ports(old)}
        for port in new_ports:
            if port.get("nodePort") in (None, 0):
                previous = old_by_name.get(port.get("name", ""))
                if previous and previous not in in_use:
                    port["nodePort"] = previous
                    in_use.add(previous)
    if (
        needs_health_check_port(old)
        and needs_health_check_port(spec)
        and spec.get("healthCheckNodePort") in (None, 0)
        and old.get("healthCheckNodePort")
    ):
        spec["healthCheckNodePort"] = old["healthCheckNodePort"]
