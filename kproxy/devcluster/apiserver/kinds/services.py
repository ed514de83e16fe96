"""Services: ClusterIP, NodePort and health check port allocation, on create and update.

Defaults and validation live in ``service_spec``, IP family planning in ``ip_families``. On
update, values the client left out are carried over from the stored object (clusterIPs,
nodePorts by port name), and fields that a type change makes meaningless are dropped when
the client did not change them (a NodePort Service turned ClusterIP loses its nodePorts), so
that ``kubectl apply`` and read-modify-write clients behave as against a real cluster.
"""

from __future__ import annotations

from typing import Any

from kproxy.devcluster.apiserver.allocators import AllocationError, Reservations
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.kinds.ip_families import ServiceNetwork, plan_families
from kproxy.devcluster.apiserver.kinds.service_spec import (
    CLUSTER_IP,
    HEADLESS,
    LOAD_BALANCER,
    SERVICE_FIELDS,
    SINGLE_STACK,
    allocates_node_ports,
    allows_node_ports,
    apply_defaults,
    externally_accessible,
    family_of,
    is_headless,
    needs_cluster_ip,
    needs_health_check_port,
    service_ports,
    service_type,
    validate_spec,
    validate_status,
)
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.patch import ListMerge
from kproxy.devcluster.apiserver.resources import SERVICES
from kproxy.devcluster.apiserver.validation import (
    FieldError,
    dns_1035_label_problems,
    duplicate,
    forbidden,
    invalid,
    is_int,
    parse_ip,
)

__all__ = ["ServiceNetwork", "ServiceRules"]


def _held_node_ports(spec: JsonObject | None) -> set[int]:
    if spec is None or not allows_node_ports(spec):
        return set()
    return {
        p["nodePort"] for p in service_ports(spec) if is_int(p.get("nodePort")) and p["nodePort"]
    }


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
    known_fields = SERVICE_FIELDS
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
        apply_defaults(body, spec)
        errors = validate_spec(spec) + validate_status(body)
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
        apply_defaults(body, spec)
        errors = validate_spec(spec)
        if errors:
            return errors
        return self._allocate(spec, old_spec, reservations)

    def release(self, old: JsonObject, reservations: Reservations) -> None:
        spec = old.get("spec") or {}
        for ip in _held_cluster_ips(spec):
            allocator = self.network.allocator_for(family_of(ip))
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
            allocator = self.network.allocator_for(family_of(ip))
            if allocator is not None:
                allocator.mark_used(ip)
        for port in _held_node_ports(spec):
            self.network.node_ports.mark_used(port)
        health_port = _held_health_check_port(spec)
        if health_port is not None:
            self.network.node_ports.mark_used(health_port)

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

        plan = plan_families(spec, self.network)
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
            allocator = self.network.allocator_for(family_of(ip))
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
        for index, port in enumerate(service_ports(spec)):
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
                errors.append(
                    forbidden(field, f"may not be used when `type` is '{service_type(spec)}'")
                )
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
        for port in service_ports(spec):
            if port.get("nodePort") in old_node_ports:
                port.pop("nodePort")
    if service_type(old) == LOAD_BALANCER and service_type(spec) != LOAD_BALANCER:
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
        new_ports = service_ports(spec)
        in_use = {p.get("nodePort") for p in new_ports if p.get("nodePort")}
        old_by_name = {p.get("name", ""): p.get("nodePort") for p in service_ports(old)}
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
