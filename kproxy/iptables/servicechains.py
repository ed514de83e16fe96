"""One service port's rules: its own chains and its entries in the dispatch trees.

A pure function of the port (as one family sees it), its endpoints of that family and the
:class:`PlanContext`, following kube-proxy 1.33's syncProxyRules for one service port:

- ``KPROXY-SVC-<hash>`` (Cluster policy) and ``KPROXY-SVL-<hash>`` (Local policy) pick an
  endpoint at random (``statistic``), after ClientIP affinity (``recent``) if configured;
  the chain cluster-IP traffic enters first marks off-cluster sources for masquerade;
- ``KPROXY-EXT-<hash>`` handles NodePort, external and load-balancer traffic: masquerade and
  Cluster policy, or, under externalTrafficPolicy Local, pod and node traffic short-circuited
  to the Cluster chain and the rest to the Local one;
- ``KPROXY-FW-<hash>`` applies loadBalancerSourceRanges;
- ``KPROXY-SEP-<hash>`` per endpoint: hairpin masquerade, then DNAT;
- dispatch entries: the per-address rules kube-proxy puts straight into ``KUBE-SERVICES``,
  ``KUBE-NODEPORTS``, ``KUBE-EXTERNAL-SERVICES`` and ``KUBE-PROXY-FIREWALL``, including the
  filter-table REJECT (no endpoints) and DROP (no local endpoints) rules.

kube-proxy's two nfacct rules (a counted copy of each NodePort rule for 127.0.0.0/8, and the
counter on the INVALID drop) only feed metrics and need the nfacct module: they are left out,
and the uncounted NodePort rule serves localhost as well.

Chain names hash kube-proxy's own input (``ns/name:port`` + protocol, + ``ip:port`` for
endpoints), so ``KPROXY-SVC-XPGD46QRK7WJZT7O`` is the chain kube-proxy calls
``KUBE-SVC-XPGD46QRK7WJZT7O``. Rules are in iptables-save form (:mod:`rulesyntax`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass

from kproxy.iptables.context import PlanContext, firewall_node_ip
from kproxy.iptables.dispatch import DispatchEntry
from kproxy.iptables.endpointchains import (
    balancing_rules,
    base32_prefix,
    endpoint_chains,
    port_hash_state,
)
from kproxy.iptables.localdetect import with_source_match
from kproxy.iptables.ruleset import Chain
from kproxy.iptables.rulesyntax import comment, host, quote, reject_target
from kproxy.iptables.serviceview import FamilyServicePort
from kproxy.iptables.staticchains import MARK_MASQ, PROXY_FIREWALL, DispatchRoot
from kproxy.iptables.topology import EndpointCategories, categorize_endpoints
from kproxy.model.types import Endpoint, Protocol, ServicePortName

RootedEntry = tuple[DispatchRoot, DispatchEntry]


@dataclass(frozen=True, slots=True)
class ServicePortPlan:
    """What one service port contributes to a family's ruleset."""

    name: ServicePortName
    chains: tuple[Chain, ...]  # nat chains owned by the port
    entries: tuple[RootedEntry, ...]  # its leaf rules in the dispatch trees
    endpoint_count: int  # endpoints of the family, for kube-proxy's large-cluster mode
    # Traffic policy Local with no local endpoint (kube-proxy's no_endpoints metrics).
    no_local_internal: bool = False
    no_local_external: bool = False


@dataclass(frozen=True, slots=True)
class _ChainNames:
    cluster: str
    local: str
    external: str
    firewall: str


def _chain_names(view: FamilyServicePort) -> _ChainNames:
    suffix = base32_prefix(port_hash_state(view).digest())
    return _ChainNames(
        cluster=f"KPROXY-SVC-{suffix}",
        local=f"KPROXY-SVL-{suffix}",
        external=f"KPROXY-EXT-{suffix}",
        firewall=f"KPROXY-FW-{suffix}",
    )


def plan_service_port(
    view: FamilyServicePort,
    endpoints: tuple[Endpoint, ...],
    context: PlanContext,
    *,
    endpoint_comments: bool = True,
) -> ServicePortPlan:
    """The chains and dispatch entries of one port. ``endpoints`` are of the view's family.

    ``endpoint_comments`` is off in kube-proxy's large-cluster mode (more than 1000
    endpoints in the family), which leaves the comments out of SVC/SVL → SEP and SEP rules.
    """
    names = _chain_names(view)
    categories = categorize_endpoints(
        endpoints,
        uses_cluster=view.uses_cluster_endpoints,
        uses_local=view.uses_local_endpoints,
        node_name=context.hostname,
        zone=context.zone,
        prefer_same_node_hints=context.prefer_same_node_hints,
    )
    routing = _Routing(view, names, categories, context)
    return ServicePortPlan(
        name=view.name,
        chains=_port_chains(view, context, names, routing, categories, endpoint_comments),
        entries=_dispatch_entries(view, context, names, routing),
        endpoint_count=len(endpoints),
        no_local_internal=routing.has_endpoints and not routing.has_internal,
        no_local_external=routing.has_endpoints and not routing.has_external,
    )


class _Routing:
    """kube-proxy's per-port decisions: which chain each kind of traffic enters, and what
    the filter table does with traffic that has no endpoint to go to."""

    __slots__ = (
        "external_filter", "external_policy_chain", "external_reason", "has_endpoints",
        "has_external", "has_internal", "internal_chain", "internal_filter", "internal_reason",
        "load_balancer_chain", "uses_external_chain", "uses_firewall",
    )

    def __init__(
        self,
        view: FamilyServicePort,
        names: _ChainNames,
        categories: EndpointCategories,
        context: PlanContext,
    ) -> None:
        has_endpoints = self.has_endpoints = categories.has_any
        self.internal_chain = names.cluster
        self.has_internal = has_endpoints
        if view.internal_policy_local:
            self.internal_chain = names.local
            self.has_internal = bool(categories.local)
        self.external_policy_chain = names.cluster
        self.has_external = has_endpoints
        if view.external_policy_local:
            self.external_policy_chain = names.local
            self.has_external = bool(categories.local)
        # Even without endpoints for external traffic, the EXT chain short-circuits pods and
        # the node itself to the cluster endpoints.
        self.uses_external_chain = has_endpoints and view.externally_accessible
        self.uses_firewall = (
            has_endpoints and bool(view.load_balancer_ips) and bool(view.source_ranges)
        )
        self.load_balancer_chain = names.firewall if self.uses_firewall else names.external
        if not has_endpoints:
            self.internal_filter = self.external_filter = reject_target(context.family)
            self.internal_reason = self.external_reason = f"{view.name_text} has no endpoints"
        else:
            self.internal_filter = self.external_filter = "DROP"
            reason = f"{view.name_text} has no local endpoints"
            self.internal_reason = self.external_reason = reason


def _dispatch_entries(
    view: FamilyServicePort, context: PlanContext, names: _ChainNames, routing: _Routing
) -> tuple[RootedEntry, ...]:
    """The port's rules in KPROXY-SERVICES, -NODEPORTS, -EXTERNAL-SERVICES, -PROXY-FIREWALL."""
    port = view.port
    key = port.name
    name, protocol, family, service_port = view.name_text, view.protocol, context.family, port.port
    entries: list[RootedEntry] = []

    def addressed(root: DispatchRoot, kind: str, ip: str, text: str, target: str) -> None:
        rule = (
            f"-d {host(ip, family)} -p {protocol} {comment(text)} "
            f"-m {protocol} --dport {service_port} -j {target}"
        )
        entry_key: Hashable = (key, kind, ip)
        entries.append((root, DispatchEntry(entry_key, ip, port.protocol, service_port, rule)))

    def by_port(root: DispatchRoot, kind: str, number: int, rule: str) -> None:
        entries.append((root, DispatchEntry((key, kind), None, port.protocol, number, rule)))

    if routing.has_internal:
        addressed(DispatchRoot.NAT_SERVICES, "cluster-ip", view.cluster_ip, f"{name} cluster IP",
                  routing.internal_chain)
    else:
        addressed(DispatchRoot.FILTER_SERVICES, "cluster-ip", view.cluster_ip,
                  routing.internal_reason, routing.internal_filter)
    for ip in view.external_ips:
        if routing.has_endpoints:
            addressed(DispatchRoot.NAT_SERVICES, "external-ip", ip, f"{name} external IP",
                      names.external)
        if not routing.has_external:
            addressed(DispatchRoot.FILTER_EXTERNAL_SERVICES, "external-ip", ip,
                      routing.external_reason, routing.external_filter)
    for ip in view.load_balancer_ips:
        if routing.has_endpoints:
            addressed(DispatchRoot.NAT_SERVICES, "load-balancer-ip", ip,
                      f"{name} loadbalancer IP", routing.load_balancer_chain)
        if routing.uses_firewall:
            addressed(DispatchRoot.FILTER_PROXY_FIREWALL, "load-balancer-ip", ip,
                      f"{name} traffic not accepted by {names.firewall}", "DROP")
        if not routing.has_external:
            addressed(DispatchRoot.FILTER_EXTERNAL_SERVICES, "load-balancer-ip", ip,
                      routing.external_reason, routing.external_filter)
    node_port = port.node_port
    if node_port is not None:
        if routing.has_endpoints:
            by_port(DispatchRoot.NAT_NODEPORTS, "node-port", node_port,
                    f"-p {protocol} -m comment --comment {quote(name)} "
                    f"-m {protocol} --dport {node_port} -j {names.external}")
        if not routing.has_external:
            by_port(DispatchRoot.FILTER_EXTERNAL_SERVICES, "node-port", node_port,
                    f"-p {protocol} {comment(routing.external_reason)} "
                    f"-m addrtype --dst-type LOCAL -m {protocol} --dport {node_port} "
                    f"-j {routing.external_filter}")
    health_port = port.health_check_node_port
    if health_port is not None:
        # Accepted whether or not the node has endpoints: the answer says which.
        rule = (
            f"-p tcp {comment(f'{name} health check node port')} "
            f"-m tcp --dport {health_port} -j ACCEPT"
        )
        entries.append((
            DispatchRoot.FILTER_NODEPORTS,
            DispatchEntry((key, "health-check"), None, Protocol.TCP, health_port, rule),
        ))
    return tuple(entries)


def _port_chains(
    view: FamilyServicePort,
    context: PlanContext,
    names: _ChainNames,
    routing: _Routing,
    categories: EndpointCategories,
    endpoint_comments: bool,
) -> tuple[Chain, ...]:
    """The nat chains the port owns: EXT, FW, SVC, SVL and its SEP chains."""
    chains: list[Chain] = []
    if routing.uses_external_chain:
        policy_chain = routing.external_policy_chain if routing.has_external else None
        chains.append(Chain(names.external, _external_rules(view, context, names, policy_chain)))
    if routing.uses_firewall:
        chains.append(Chain(names.firewall, _firewall_rules(view, context, names)))
    masquerade = _masquerade_rule(view, context) if routing.has_internal else None
    sep_chains, targets = endpoint_chains(view, categories.reachable, endpoint_comments)
    for chain_name, endpoints, used in (
        (names.cluster, categories.cluster, view.uses_cluster_endpoints),
        (names.local, categories.local, view.uses_local_endpoints),
    ):
        if endpoints and used:
            # Cluster-IP traffic enters through the internal chain: its masquerade rule first.
            first = masquerade if routing.internal_chain == chain_name else None
            rules = balancing_rules(view, endpoints, targets, first, endpoint_comments)
            chains.append(Chain(chain_name, rules))
    chains.extend(sep_chains)
    return tuple(chains)


def _masquerade_rule(view: FamilyServicePort, context: PlanContext) -> str | None:
    """The first rule of the chain cluster-IP traffic enters: mark what must be masqueraded."""
    header = f"-d {host(view.cluster_ip, context.family)} -p {view.protocol}"
    if not context.masquerade_all:
        detector = context.local_detector
        if not detector.implemented:
            return None
        # Off-cluster clients reach the VIP through a route to any node: answers must come
        # back through this node, so their source is masqueraded.
        header = with_source_match(header, detector.if_not_local)
    return (
        f"{header} {comment(f'{view.name_text} cluster IP')} "
        f"-m {view.protocol} --dport {view.port.port} -j {MARK_MASQ}"
    )


def _external_rules(
    view: FamilyServicePort,
    context: PlanContext,
    names: _ChainNames,
    policy_chain: str | None,
) -> tuple[str, ...]:
    name = view.name_text
    rules: list[str] = []
    if not view.external_policy_local:
        # Endpoints may be on other nodes: masquerade so replies come back through here.
        rules.append(
            f"{comment(f'masquerade traffic for {name} external destinations')} -j {MARK_MASQ}"
        )
    else:
        detector = context.local_detector
        if detector.implemented:
            # Pods reaching an external address behave as if they went out to the load
            # balancer and came back: neither traffic policy applies.
            text = comment(f"pod traffic for {name} external destinations")
            rules.append(f"{with_source_match('', detector.if_local)} {text} -j {names.cluster}")
        # The node's own traffic has a local source (often the LB IP): masquerade and use
        # every endpoint.
        rules.append(
            f"{comment(f'masquerade LOCAL traffic for {name} external destinations')} "
            f"-m addrtype --src-type LOCAL -j {MARK_MASQ}"
        )
        rules.append(
            f"{comment(f'route LOCAL traffic for {name} external destinations')} "
            f"-m addrtype --src-type LOCAL -j {names.cluster}"
        )
    if policy_chain is not None:
        rules.append(f"-j {policy_chain}")
    return tuple(rules)


def _firewall_rules(
    view: FamilyServicePort, context: PlanContext, names: _ChainNames
) -> tuple[str, ...]:
    text = comment(f"{view.name_text} loadbalancer IP")
    rules = [f"-s {cidr} {text} -j {names.external}" for cidr in view.source_ranges]
    if _contains(view.source_ranges, firewall_node_ip(context)):
        # A VIP-style load balancer's IP is often local to the node: requests from the node
        # to it loop back with the VIP as source, and must pass when the node may connect.
        rules.extend(
            f"-s {host(ip, context.family)} {text} -j {names.external}"
            for ip in view.load_balancer_ips
        )
    # What falls off the end was not DNATed: KPROXY-PROXY-FIREWALL drops it in filter.
    rules.append(comment(f"other traffic to {view.name_text} will be dropped by {PROXY_FIREWALL}"))
    return tuple(rules)


def _contains(cidrs: tuple[str, ...], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
