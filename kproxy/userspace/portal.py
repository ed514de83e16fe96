"""The "portal" rules of userspace mode: service addresses redirected to listeners (pure).

For one IP family, :func:`plan_portals` turns the port selections (:mod:`.selection`) and the
ports their listeners are bound to into a :class:`~kproxy.iptables.ruleset.Ruleset` of the
chains in :mod:`.chains`, rendered and applied like iptables mode's (one restore
transaction per family and sync). Every forwarded address becomes a ``REDIRECT`` to the
listener's port: in PREROUTING for pods and outside clients (to the address of the
interface the packet came in on), in OUTPUT for the node's own connections (to loopback).
The relay then connects to the endpoint from the node, so endpoints see the node's address.

kube-proxy's userspace mode DNATed the node's own traffic to the node IP; a REDIRECT needs
no node IP and reaches the same wildcard-bound listener. NodePorts answer on the local
addresses iptables mode answers on (``--nodeport-addresses``, localhost unless
``--iptables-localhost-nodeports=false``; never ``::1``); loopback needs no
``route_localnet`` here, since localhost traffic never leaves the node.

Under loadBalancerSourceRanges only the listed sources are redirected, from the node as from
pods and outside clients, and, when a range holds the node's IP, sources equal to one of the
service's load-balancer IPs (kube-proxy's rule for a VIP local to the node, whose requests
from the node carry the VIP as source); the rest is dropped in the filter table. Pods of
this node reaching such a load-balancer IP under externalTrafficPolicy Local are treated as
outside clients (iptables mode short-circuits them to every endpoint): a source-range match
and a pod match cannot share one rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kproxy.iptables.context import PlanContext, firewall_node_ip
from kproxy.iptables.localdetect import with_source_match
from kproxy.iptables.ruleset import Chain, Ruleset, Table, TableRules
from kproxy.iptables.rulesyntax import LOOPBACK_CIDR, comment, host
from kproxy.renderable import port_problem
from kproxy.userspace.chains import (
    NODEPORT_CONTAINER,
    NODEPORT_HOST,
    PORTALS_CONTAINER,
    PORTALS_FILTER,
    PORTALS_HOST,
    USERSPACE_JUMPS,
)
from kproxy.userspace.selection import ListenerKey, PortSelection, Scope

NODEPORTS_COMMENT = "kproxy userspace nodeports"


class _Rules:
    """Rules of every chain, filled port by port."""

    def __init__(self) -> None:
        self.container: list[str] = []
        self.host: list[str] = []
        self.nodeport_container: list[str] = []
        self.nodeport_host: list[str] = []
        self.filter: list[str] = []


@dataclass(frozen=True, slots=True)
class PortRules:
    """One service port's share of each chain; a sync reuses it while its inputs hold."""

    container: tuple[str, ...] = ()
    host: tuple[str, ...] = ()
    nodeport_container: tuple[str, ...] = ()
    nodeport_host: tuple[str, ...] = ()
    filter: tuple[str, ...] = ()


def plan_port(selection: PortSelection, ports: Mapping[ListenerKey, int],
              context: PlanContext) -> PortRules:
    """The rules of one port; ``ports`` holds (at least) its listeners' ports.

    Empty for a port with a string the payload cannot hold: the proxier skips (and reports)
    such a port before selecting it; this keeps the payload whole for any other caller.
    """
    if selection.view.family is not context.family:
        raise ValueError(f"{selection.view.name_text}: a {selection.view.family} port "
                         f"in the {context.family} plan")
    if port_problem(selection.view.port) is not None:
        return PortRules()
    rules = _Rules()
    _PortRules(selection, ports, context, rules).add()
    return PortRules(tuple(rules.container), tuple(rules.host),
                     tuple(rules.nodeport_container), tuple(rules.nodeport_host),
                     tuple(rules.filter))


def plan_portals(
    selections: Iterable[PortSelection],
    ports: Mapping[ListenerKey, int],
    context: PlanContext,
) -> Ruleset:
    """The family's userspace ruleset. ``ports`` holds the port of every listener that
    ``selections`` name (a selection whose listener is missing is not redirected)."""
    return assemble_portals([plan_port(selection, ports, context) for selection in selections],
                            context)


def assemble_portals(ports: Sequence[PortRules], context: PlanContext) -> Ruleset:
    """The family's ruleset from every port's rules, in the order given."""
    def joined(part: Callable[[PortRules], tuple[str, ...]]) -> list[str]:
        return [rule for port in ports for rule in part(port)]

    nat = (
        Chain(PORTALS_CONTAINER, (*joined(lambda p: p.container),
                                  *_nodeport_entry_rules(context, NODEPORT_CONTAINER))),
        Chain(PORTALS_HOST, (*joined(lambda p: p.host),
                             *_nodeport_entry_rules(context, NODEPORT_HOST))),
        Chain(NODEPORT_CONTAINER, tuple(joined(lambda p: p.nodeport_container))),
        Chain(NODEPORT_HOST, tuple(joined(lambda p: p.nodeport_host))),
    )
    filter_chains = (Chain(PORTALS_FILTER, tuple(joined(lambda p: p.filter))),)
    return Ruleset(
        context.family,
        {
            Table.NAT: TableRules(Table.NAT, {chain.name: chain for chain in nat}),
            Table.FILTER: TableRules(Table.FILTER, {c.name: c for c in filter_chains}),
        },
        USERSPACE_JUMPS,
    )


class _PortRules:
    """One port's rules in every chain."""

    def __init__(self, selection: PortSelection, ports: Mapping[ListenerKey, int],
                 context: PlanContext, rules: _Rules) -> None:
        self.selection = selection
        self.view = selection.view
        self.ports = ports
        self.context = context
        self.rules = rules
        self.protocol = self.view.protocol
        self.match = f"-m {self.protocol} --dport {self.view.port.port}"

    def add(self) -> None:
        selection, view, rules = self.selection, self.view, self.rules
        name = view.name_text
        # Cluster IP: the same listener for pods, outside clients and the node.
        cluster_ip = self._addressed(view.cluster_ip, f"{name} cluster IP")
        redirect = self._redirect(selection.internal)
        if redirect:
            rules.container.append(f"{cluster_ip} {redirect}")
            rules.host.append(f"{cluster_ip} {redirect}")
        else:
            self._unserved(view.cluster_ip, f"{name} has no endpoints")
        for ip in view.external_ips:
            self._external_address(ip, f"{name} external IP", ())
        for ip in view.load_balancer_ips:
            self._external_address(ip, f"{name} loadbalancer IP", view.source_ranges)
        if view.port.node_port is not None:
            self._node_port(view.port.node_port)
        health = view.port.health_check_node_port
        if health is not None:
            rules.filter.append(f"-p tcp {comment(f'{name} health check node port')} "
                                f"-m tcp --dport {health} -j ACCEPT")

    def _external_address(self, ip: str, text: str, source_ranges: tuple[str, ...]) -> None:
        selection, rules = self.selection, self.rules
        outside = self._redirect(selection.external)
        from_node = self._redirect(selection.external_from_node)
        address = self._addressed(ip, text)
        if source_ranges:
            # The same sources pass from the node as from elsewhere, as they pass
            # kube-proxy's firewall chain from PREROUTING and OUTPUT alike.
            allowed = list(source_ranges)
            if _contains(source_ranges, firewall_node_ip(self.context)):
                # A VIP-style load balancer's IP is often local: the node's requests
                # to it loop back with the VIP as their source.
                allowed += [host(lb, self.context.family) for lb in
                            self.view.load_balancer_ips]
            if outside:
                rules.container += [f"-s {cidr} {address} {outside}" for cidr in allowed]
            if from_node:
                rules.host += [f"-s {cidr} {address} {from_node}" for cidr in allowed]
            if selection.external is not None:
                rules.filter.append(
                    f"{self._addressed(ip, f'{text} traffic outside its source ranges')} "
                    "-j DROP")
        else:
            if from_node and from_node != outside:
                pods = self.context.local_detector.if_local
                if pods:
                    rules.container.append(f"{with_source_match(address, pods)} {from_node}")
            if outside:
                rules.container.append(f"{address} {outside}")
            if from_node:
                rules.host.append(f"{address} {from_node}")
        if selection.external is None:
            self._unserved(ip, self._reason())

    def _node_port(self, node_port: int) -> None:
        selection, rules = self.selection, self.rules
        outside = self._redirect(selection.external)
        from_node = self._redirect(selection.external_from_node)
        head = f"-p {self.protocol} {comment(self.view.name_text)}"
        match = f"-m {self.protocol} --dport {node_port}"
        if from_node and from_node != outside:
            pods = self.context.local_detector.if_local
            if pods:
                rules.nodeport_container.append(
                    f"{with_source_match(f'-p {self.protocol}', pods)} "
                    f"{comment(self.view.name_text)} {match} {from_node}")
        if outside:
            rules.nodeport_container.append(f"{head} {match} {outside}")
        if from_node:
            rules.nodeport_host.append(f"{head} {match} {from_node}")
        if selection.external is None:
            rules.filter.append(
                f"-p {self.protocol} {comment(self._reason())} -m addrtype --dst-type LOCAL "
                f"{match} -j {selection.unserved}")

    def _reason(self) -> str:
        if self.selection.unserved == "DROP":
            return f"{self.view.name_text} has no local endpoints"
        return f"{self.view.name_text} has no endpoints"

    def _addressed(self, ip: str, text: str) -> str:
        return (f"-d {host(ip, self.context.family)} -p {self.protocol} {comment(text)} "
                f"{self.match}")

    def _unserved(self, ip: str, text: str) -> None:
        self.rules.filter.append(f"{self._addressed(ip, text)} -j {self.selection.unserved}")

    def _redirect(self, scope: Scope | None) -> str:
        """The REDIRECT target to ``scope``'s listener, or "" when there is none."""
        if scope is None:
            return ""
        port = self.ports.get(self.selection.key(scope))
        return "" if port is None else f"-j REDIRECT --to-ports {port}"


def _nodeport_entry_rules(context: PlanContext, target: str) -> tuple[str, ...]:
    """The rules that send local destinations on to a NodePort chain, after every service
    address: iptables mode's ``KPROXY-NODEPORTS`` entry rules."""
    text = comment(NODEPORTS_COMMENT)
    jump = f"-m addrtype --dst-type LOCAL -j {target}"
    loopback = LOOPBACK_CIDR[context.family]
    if context.nodeports_on_all_addresses:
        if context.ipv6 or not context.localhost_nodeports:
            return (f"! -d {loopback} {text} {jump}",)
        return (f"{text} {jump}",)
    rules = [f"-d {cidr} {text} {jump}" for cidr in context.nodeport_cidrs]
    if not context.localhost_nodeports and _overlaps_loopback(context.nodeport_cidrs, loopback):
        # Loopback inside a --nodeport-addresses CIDR, with localhost NodePorts off.
        rules.insert(0, f"-d {loopback} {comment('localhost nodeports are disabled')} -j RETURN")
    return tuple(rules)


def _overlaps_loopback(cidrs: tuple[str, ...], loopback: str) -> bool:
    network = ipaddress.ip_network(loopback)
    return any(ipaddress.ip_network(cidr, strict=False).overlaps(network) for cidr in cidrs)


def _contains(cidrs: tuple[str, ...], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
