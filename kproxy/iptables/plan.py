"""The pure iptables planner: snapshot + node configuration -> kube-proxy 1.33's rules.

Public entry points:

- :func:`plan_context` builds the :class:`PlanContext` for one IP family from the
  ``ProxyConfig`` and this node's ``NodeInfo``;
- :class:`IncrementalPlanner` plans a family's :class:`~kproxy.iptables.ruleset.Ruleset`
  (``full``) and, after that, the :class:`~kproxy.iptables.ruleset.RulesetDelta` of each
  change (``partial``);
- :func:`plan_ruleset` is a one-shot full plan.

How the plan is organised (each part in its own module):

- :mod:`~kproxy.iptables.staticchains`: the fixed chains (``KPROXY-SERVICES``,
  ``KPROXY-POSTROUTING``, ``KPROXY-FORWARD``, ...) and the jumps from the builtin chains;
- :mod:`~kproxy.iptables.servicechains`: one service port's chains (SVC, SVL, EXT, FW, SEP)
  and its per-address rules;
- :mod:`~kproxy.iptables.topology`: which endpoints each traffic policy uses;
- :mod:`~kproxy.iptables.localdetect`: matches for traffic from this node's pods;
- :mod:`~kproxy.iptables.dispatch`: where the per-address rules go.

Dispatch and kube-proxy's rule order
------------------------------------
kube-proxy appends one rule per service address to ``KUBE-SERVICES`` (and per NodePort to
``KUBE-NODEPORTS``, and the REJECT/DROP/ACCEPT rules to their filter chains), then, last in
nat ``KUBE-SERVICES``, the jump to ``KUBE-NODEPORTS`` for local destinations. kproxy keeps
exactly these rules but puts each of those chains at the root of a dispatch tree, so that a
packet evaluates a logarithmic number of rules. The NodePorts jump is the one rule that must
stay behind every service rule: it goes into the tree as an entry *without destination*,
which a tree always keeps in its root after all of its buckets. That gives kube-proxy's order
(every per-address rule a packet could match, then the NodePorts jump) with no extra chain
between the builtin jumps and the root, so the entry chains keep kube-proxy's names.
"""

from __future__ import annotations

from kproxy.iptables.context import PlanContext, plan_context
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.ruleset import Ruleset
from kproxy.state import Snapshot

__all__ = ["IncrementalPlanner", "PlanContext", "plan_context", "plan_ruleset"]


def plan_ruleset(snapshot: Snapshot, context: PlanContext) -> Ruleset:
    """Everything ``context.family`` needs for ``snapshot``, planned from scratch."""
    return IncrementalPlanner(context).full(snapshot)
