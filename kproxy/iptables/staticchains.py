"""The fixed chains (kube-proxy's, with the ``KPROXY-`` prefix) and the jumps into them.

nat:
  ``KPROXY-SERVICES``     entry from PREROUTING and OUTPUT: one rule per service address,
                          then the jump to ``KPROXY-NODEPORTS`` for local destinations
  ``KPROXY-NODEPORTS``    one rule per NodePort
  ``KPROXY-POSTROUTING``  masquerades what ``KPROXY-MARK-MASQ`` marked
  ``KPROXY-MARK-MASQ``    sets the masquerade bit
filter:
  ``KPROXY-SERVICES``, ``KPROXY-EXTERNAL-SERVICES``  REJECT/DROP for services without
                          (local) endpoints
  ``KPROXY-NODEPORTS``    ACCEPT for health check node ports
  ``KPROXY-PROXY-FIREWALL``  DROP for load-balancer traffic outside loadBalancerSourceRanges
  ``KPROXY-FORWARD``      lets marked and established service traffic through FORWARD
  ``KPROXY-FIREWALL``     drops martian packets to 127.0.0.0/8 (CVE-2020-8558)
mangle, nat, filter:
  ``KPROXY-PROXY-CANARY`` empty; its disappearance shows someone flushed the tables

The per-service rules of the first five chains live in dispatch trees rooted at them
(:mod:`kproxy.iptables.dispatch`); this module only holds what does not depend on services.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from kproxy.iptables.context import PlanContext
from kproxy.iptables.dispatch import DispatchBy
from kproxy.iptables.ruleset import BuiltinJump, Chain, Table
from kproxy.iptables.rulesyntax import LOOPBACK_CIDR, comment

SERVICES = "KPROXY-SERVICES"
EXTERNAL_SERVICES = "KPROXY-EXTERNAL-SERVICES"
NODEPORTS = "KPROXY-NODEPORTS"
POSTROUTING = "KPROXY-POSTROUTING"
MARK_MASQ = "KPROXY-MARK-MASQ"
FORWARD = "KPROXY-FORWARD"
PROXY_FIREWALL = "KPROXY-PROXY-FIREWALL"
FIREWALL = "KPROXY-FIREWALL"
CANARY = "KPROXY-PROXY-CANARY"

NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


class DispatchRoot(enum.Enum):
    """The chains whose per-service rules go through a dispatch tree, and how they split.

    Port mode for everything that NodePorts reach (they have no destination of their own);
    filter ``KPROXY-EXTERNAL-SERVICES`` mixes addressed rules with NodePort rules, and every
    new connection walks it, so it is split by port as well.
    """

    NAT_SERVICES = (Table.NAT, SERVICES, "destination")
    NAT_NODEPORTS = (Table.NAT, NODEPORTS, "port")
    FILTER_SERVICES = (Table.FILTER, SERVICES, "destination")
    FILTER_EXTERNAL_SERVICES = (Table.FILTER, EXTERNAL_SERVICES, "port")
    FILTER_NODEPORTS = (Table.FILTER, NODEPORTS, "port")
    FILTER_PROXY_FIREWALL = (Table.FILTER, PROXY_FIREWALL, "destination")

    def __init__(self, table: Table, chain: str, by: DispatchBy) -> None:
        self.table = table
        self.chain = chain
        self.by = by


@dataclass(frozen=True, slots=True)
class TailRule:
    """A rule without destination at the end of nat ``KPROXY-SERVICES``, and its rank there."""

    rank: int
    rule: str


def nodeport_tail_rules(context: PlanContext) -> tuple[TailRule, ...]:
    """The jump(s) to nat ``KPROXY-NODEPORTS`` that must follow every service rule.

    With all local addresses (the default), one rule on ``--dst-type LOCAL``; localhost is
    excluded unless localhost NodePorts are on (never for IPv6). With ``--nodeport-addresses``
    kube-proxy lists the node's interface addresses inside those CIDRs at sync time; a pure
    plan cannot read interfaces, so each CIDR is matched together with ``--dst-type LOCAL``,
    which selects the same addresses when the packet arrives. Loopback addresses that must
    not answer are returned from first (rank 0) when a CIDR covers them.
    """
    target = f"-j {NODEPORTS}"
    text = comment(NODEPORTS_COMMENT)
    loopback = LOOPBACK_CIDR[context.family]
    if context.nodeports_on_all_addresses:
        if context.ipv6 or not context.localhost_nodeports:
            return (TailRule(1, f"! -d {loopback} {text} -m addrtype --dst-type LOCAL {target}"),)
        return (TailRule(1, f"{text} -m addrtype --dst-type LOCAL {target}"),)
    rules = [
        TailRule(1, f"-d {cidr} {text} -m addrtype --dst-type LOCAL {target}")
        for cidr in context.nodeport_cidrs
    ]
    if not context.localhost_nodeports and _covers_loopback(context):
        skip = comment("localhost nodeports are disabled")
        rules.insert(0, TailRule(0, f"-d {loopback} {skip} -j RETURN"))
    return tuple(rules)


def static_chains(context: PlanContext) -> dict[Table, tuple[Chain, ...]]:
    """Every fixed chain that is not a dispatch root, with its rules, per table."""
    mark = context.masquerade_mark
    masquerade = "MASQUERADE --random-fully" if context.random_fully else "MASQUERADE"
    nat = (
        Chain(
            POSTROUTING,
            (
                f"-m mark ! --mark {mark}/{mark} -j RETURN",
                f"-j MARK --set-xmark {mark}/0x0",
                f"{comment('kubernetes service traffic requiring SNAT')} -j {masquerade}",
            ),
        ),
        Chain(MARK_MASQ, (f"-j MARK --set-xmark {mark}/{mark}",)),
        Chain(CANARY),
    )
    forward: list[str] = []
    if not context.tcp_be_liberal:
        forward.append("-m conntrack --ctstate INVALID -j DROP")
    forward.append(
        f"{comment('kubernetes forwarding rules')} -m mark --mark {mark}/{mark} -j ACCEPT"
    )
    forward.append(
        f"{comment('kubernetes forwarding conntrack rule')} "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    firewall: tuple[str, ...] = ()
    if not context.ipv6 and context.localhost_nodeports:
        firewall = (
            f"! -s 127.0.0.0/8 -d 127.0.0.0/8 {comment('block incoming localnet connections')} "
            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        )
    filter_chains = (Chain(FORWARD, tuple(forward)), Chain(FIREWALL, firewall), Chain(CANARY))
    return {Table.NAT: nat, Table.FILTER: filter_chains, Table.MANGLE: (Chain(CANARY),)}


def _jump(table: Table, chain: str, target: str, text: str, new_only: bool) -> BuiltinJump:
    state = "-m conntrack --ctstate NEW " if new_only else ""
    return BuiltinJump(table, chain, f"{state}{comment(text)} -j {target}")


_EXTERNAL = "kproxy externally-visible service portals"
_PORTALS = "kproxy service portals"
_LB_FIREWALL = "kproxy load balancer firewall"

# In kube-proxy's order: inserting each missing jump at the top of its builtin chain, one
# after the other, leaves them in kube-proxy's final order (the last one listed on top).
BUILTIN_JUMPS: tuple[BuiltinJump, ...] = (
    _jump(Table.FILTER, "INPUT", EXTERNAL_SERVICES, _EXTERNAL, True),
    _jump(Table.FILTER, "FORWARD", EXTERNAL_SERVICES, _EXTERNAL, True),
    _jump(Table.FILTER, "INPUT", NODEPORTS, "kproxy health check service ports", False),
    _jump(Table.FILTER, "FORWARD", SERVICES, _PORTALS, True),
    _jump(Table.FILTER, "OUTPUT", SERVICES, _PORTALS, True),
    _jump(Table.FILTER, "FORWARD", FORWARD, "kproxy forwarding rules", False),
    _jump(Table.FILTER, "INPUT", PROXY_FIREWALL, _LB_FIREWALL, True),
    _jump(Table.FILTER, "OUTPUT", PROXY_FIREWALL, _LB_FIREWALL, True),
    _jump(Table.FILTER, "FORWARD", PROXY_FIREWALL, _LB_FIREWALL, True),
    _jump(Table.NAT, "OUTPUT", SERVICES, _PORTALS, False),
    _jump(Table.NAT, "PREROUTING", SERVICES, _PORTALS, False),
    _jump(Table.NAT, "POSTROUTING", POSTROUTING, "kproxy postrouting rules", False),
    _jump(Table.FILTER, "INPUT", FIREWALL, "kproxy firewall", False),
    _jump(Table.FILTER, "OUTPUT", FIREWALL, "kproxy firewall", False),
)


def _covers_loopback(context: PlanContext) -> bool:
    loopback = ipaddress.ip_network(LOOPBACK_CIDR[context.family])
    return any(
        ipaddress.ip_network(cidr, strict=False).overlaps(loopback)
        for cidr in context.nodeport_cidrs
    )
