"""Service IP families: the cluster's service CIDRs and what addresses a Service gets.

``plan_families`` turns a spec's clusterIP(s), ipFamilies and ipFamilyPolicy into the
requested addresses, the final family list and the policy, as a real server defaults and
checks them (single-stack by default, dual-stack when asked and configured).
"""

from __future__ import annotations

from dataclasses import dataclass

from kproxy.devcluster.apiserver.allocators import IPAllocator, PortAllocator
from kproxy.devcluster.apiserver.kinds.service_spec import (
    FAMILIES,
    FAMILY_POLICIES,
    HEADLESS,
    INVALID_IP,
    REQUIRE_DUAL_STACK,
    SINGLE_STACK,
    family_of,
)
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.validation import (
    FieldError,
    duplicate,
    invalid,
    not_supported,
    parse_ip,
)


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


def plan_families(
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
            family = family_of(ip)
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
