"""The chains userspace mode owns, and how its rules enter them from the builtin chains.

They carry kproxy's prefix, so ``kproxy cleanup`` removes them with everything else, and
names of their own, so that either mode can remove the other's rules when it starts
(:mod:`kproxy.modeswitch`) without touching its own.

nat:
  ``KPROXY-PORTALS-CONTAINER``   from PREROUTING: service addresses -> a listener's port
  ``KPROXY-PORTALS-HOST``        from OUTPUT: the same for the node's own connections
  ``KPROXY-NODEPORT-CONTAINER``  NodePorts, entered last from ``KPROXY-PORTALS-CONTAINER``
  ``KPROXY-NODEPORT-HOST``       NodePorts, entered last from ``KPROXY-PORTALS-HOST``
filter:
  ``KPROXY-PORTALS-FILTER``      from INPUT, FORWARD, OUTPUT: REJECT / DROP for service
                                 ports without (local) endpoints, DROP outside
                                 loadBalancerSourceRanges
"""

from __future__ import annotations

from kproxy.iptables.ruleset import BuiltinJump, Table
from kproxy.iptables.rulesyntax import comment

PORTALS_CONTAINER = "KPROXY-PORTALS-CONTAINER"
PORTALS_HOST = "KPROXY-PORTALS-HOST"
NODEPORT_CONTAINER = "KPROXY-NODEPORT-CONTAINER"
NODEPORT_HOST = "KPROXY-NODEPORT-HOST"
PORTALS_FILTER = "KPROXY-PORTALS-FILTER"

NAT_CHAINS = (PORTALS_CONTAINER, PORTALS_HOST, NODEPORT_CONTAINER, NODEPORT_HOST)
FILTER_CHAINS = (PORTALS_FILTER,)
USERSPACE_CHAINS = frozenset((*NAT_CHAINS, *FILTER_CHAINS))


def is_userspace_chain(name: str) -> bool:
    return name in USERSPACE_CHAINS


def _jump(table: Table, chain: str, target: str, text: str, new_only: bool) -> BuiltinJump:
    state = "-m conntrack --ctstate NEW " if new_only else ""
    return BuiltinJump(table, chain, f"{state}{comment(text)} -j {target}")


_FILTER = "kproxy userspace service portals"

# Inserted at the top of each builtin chain, as iptables mode's jumps are.
USERSPACE_JUMPS: tuple[BuiltinJump, ...] = (
    _jump(Table.FILTER, "INPUT", PORTALS_FILTER, _FILTER, True),
    _jump(Table.FILTER, "FORWARD", PORTALS_FILTER, _FILTER, True),
    _jump(Table.FILTER, "OUTPUT", PORTALS_FILTER, _FILTER, True),
    _jump(Table.NAT, "PREROUTING", PORTALS_CONTAINER,
          "kproxy userspace portals for pods and outside clients", False),
    _jump(Table.NAT, "OUTPUT", PORTALS_HOST, "kproxy userspace portals for the node", False),
)
