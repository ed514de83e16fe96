"""``PlanContext``: everything about the node and its configuration that the planner needs.

Built by the pure :func:`plan_context` from the ``ProxyConfig``, this node's ``NodeInfo`` and
the IP family being planned (IPv4 and IPv6 are planned separately, as kube-proxy runs one
proxier per family). Two facts come from the host rather than from configuration, so the
caller passes them in: whether iptables supports ``MASQUERADE --random-fully`` and whether
``net.netfilter.nf_conntrack_tcp_be_liberal`` is set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from kproxy.config.addresses import NODEPORT_ADDRESSES_PRIMARY
from kproxy.config.record import ProxyConfig
from kproxy.iptables.localdetect import LocalTrafficDetector, local_traffic_detector
from kproxy.model.types import IPFamily, NodeInfo

_LOOPBACK = {IPFamily.IPV4: "127.0.0.1", IPFamily.IPV6: "::1"}
_ZERO_CIDR = {IPFamily.IPV4: "0.0.0.0/0", IPFamily.IPV6: "::/0"}
_IPV4_LOOPBACK_START = ipaddress.IPv4Address("127.0.0.0")


@dataclass(frozen=True, slots=True)
class PlanContext:
    family: IPFamily
    hostname: str  # this node's name: endpoints with this nodeName are local
    zone: str = ""  # the node's topology.kubernetes.io/zone label ("" if none)
    pod_cidrs: tuple[str, ...] = ()  # the node's pod CIDRs of this family
    # The node's primary IP of this family (first InternalIP, else first ExternalIP).
    node_ip: str | None = None
    masquerade_mark: str = "0x4000"  # 1 << --iptables-masquerade-bit, as iptables prints it
    masquerade_all: bool = False
    local_detector: LocalTrafficDetector = field(default_factory=LocalTrafficDetector)
    # Destinations NodePorts answer on: CIDRs of this family, or () for every local address.
    nodeport_cidrs: tuple[str, ...] = ()
    # NodePorts on 127.0.0.0/8 (IPv4 only; needs net.ipv4.conf.all.route_localnet=1).
    localhost_nodeports: bool = False
    random_fully: bool = True  # iptables supports MASQUERADE --random-fully
    tcp_be_liberal: bool = False  # nf_conntrack_tcp_be_liberal is set: keep INVALID packets
    # Use endpoints' node hints (kube-proxy's PreferSameTrafficDistribution gate, off in 1.33).
    prefer_same_node_hints: bool = False
    # The inputs, so that a node change can re-derive the node-dependent fields. The node
    # does not take part in comparisons: a Node update that changes nothing above (a taint,
    # another label) leaves the context equal, and nothing is re-planned.
    config: ProxyConfig | None = field(default=None, repr=False)
    node: NodeInfo | None = field(default=None, repr=False, compare=False)

    @property
    def ipv6(self) -> bool:
        return self.family is IPFamily.IPV6

    @property
    def needs_route_localnet(self) -> bool:
        """Whether the proxier must set net.ipv4.conf.all.route_localnet=1 for this plan."""
        return self.localhost_nodeports

    @property
    def nodeports_on_all_addresses(self) -> bool:
        return not self.nodeport_cidrs

    def with_node(self, node: NodeInfo | None) -> PlanContext:
        """The same configuration seen with another version of the Node object."""
        if node == self.node:
            return self
        if self.config is None:
            return replace(self, node=node)
        return plan_context(
            self.config,
            node,
            self.family,
            random_fully=self.random_fully,
            tcp_be_liberal=self.tcp_be_liberal,
            prefer_same_node_hints=self.prefer_same_node_hints,
        )


def plan_context(
    config: ProxyConfig,
    node: NodeInfo | None,
    family: IPFamily,
    *,
    random_fully: bool = True,
    tcp_be_liberal: bool = False,
    prefer_same_node_hints: bool = False,
) -> PlanContext:
    """The context kube-proxy's proxier for ``family`` would run with."""
    override = config.node_ip_override
    node_ip = override if override is not None and _is(override, family) else (
        primary_node_ip(node, family))
    nodeport_cidrs = _nodeport_cidrs(config.nodeport_addresses, node_ip, family)
    localhost_nodeports = (
        family is IPFamily.IPV4
        and config.localhost_nodeports
        and _contains_ipv4_loopback(nodeport_cidrs)
    )
    return PlanContext(
        family=family,
        hostname=config.hostname,
        zone=(node.zone or "") if node else "",
        pod_cidrs=tuple(cidr for cidr in (node.pod_cidrs if node else ()) if _is(cidr, family)),
        node_ip=node_ip,
        masquerade_mark=f"{1 << config.masquerade_bit:#x}",
        masquerade_all=config.masquerade_all,
        local_detector=local_traffic_detector(config, node, family),
        nodeport_cidrs=nodeport_cidrs,
        localhost_nodeports=localhost_nodeports,
        random_fully=random_fully,
        tcp_be_liberal=tcp_be_liberal,
        prefer_same_node_hints=prefer_same_node_hints,
        config=config,
        node=node,
    )


def primary_node_ip(node: NodeInfo | None, family: IPFamily) -> str | None:
    """The node's IP of ``family`` as kube-proxy picks it: InternalIPs before ExternalIPs."""
    if node is None:
        return None
    for wanted in ("InternalIP", "ExternalIP"):
        for address_type, address in node.addresses:
            if address_type == wanted and _is(address, family):
                return address
    return None


def firewall_node_ip(context: PlanContext) -> str:
    """The node IP that loadBalancerSourceRanges are checked against (kube-proxy's nodeIP).

    Without a known node IP kube-proxy runs with the loopback address, and so do we.
    """
    return context.node_ip or _LOOPBACK[context.family]


def _nodeport_cidrs(
    configured: tuple[str, ...], node_ip: str | None, family: IPFamily
) -> tuple[str, ...]:
    """kube-proxy's NodePortAddresses for one family; () means "all local addresses".

    ``primary`` becomes the node IP of the family (as a /32 or /128), unless unknown or
    loopback; CIDRs of the other family are dropped; a family left without CIDRs, or one
    with a zero CIDR, matches every address.
    """
    if configured == (NODEPORT_ADDRESSES_PRIMARY,):
        if node_ip is None or ipaddress.ip_address(node_ip).is_loopback:
            return ()
        prefix = "/32" if family is IPFamily.IPV4 else "/128"
        return (node_ip + prefix,)
    cidrs = tuple(cidr for cidr in configured if _is(cidr, family))
    if _ZERO_CIDR[family] in cidrs:
        return ()
    return cidrs


def _contains_ipv4_loopback(nodeport_cidrs: tuple[str, ...]) -> bool:
    if not nodeport_cidrs:
        return True
    for cidr in nodeport_cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if network.version == 4 and (
            network.network_address.is_loopback or _IPV4_LOOPBACK_START in network
        ):
            return True
    return False


def _is(address_or_cidr: str, family: IPFamily) -> bool:
    return (":" in address_or_cidr) == (family is IPFamily.IPV6)
