"""Which endpoints each kind of traffic to a service port goes to, in userspace mode (pure).

The same decisions as iptables mode (:mod:`kproxy.iptables.servicechains`), made with the
same helpers (:func:`~kproxy.iptables.topology.categorize_endpoints`): ready endpoints,
the serving-and-terminating fallback, topology hints, and internalTrafficPolicy /
externalTrafficPolicy Local narrowing to this node's endpoints.

A relay cannot see a connection's original destination, so the two target sets a port may
need get a listener each (a :class:`Scope`):

- ``CLUSTER``: Cluster-policy endpoints; cluster-IP traffic under iTP Cluster, external
  traffic under eTP Cluster, and under eTP Local the traffic of this node's pods and of the
  node itself to external addresses (short-circuited, as iptables mode does);
- ``LOCAL``: this node's endpoints; cluster-IP traffic under iTP Local, and external traffic
  from elsewhere under eTP Local.

Traffic with nowhere to go gets the iptables-mode verdict in the filter table: REJECT when
the service has no usable endpoint at all, DROP when it has some but none on this node.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kproxy.iptables.rulesyntax import reject_target
from kproxy.iptables.serviceview import FamilyServicePort
from kproxy.iptables.topology import categorize_endpoints
from kproxy.model.types import Endpoint, IPFamily, ServicePortName
from kproxy.userspace.targets import Target


class Scope(enum.StrEnum):
    CLUSTER = "cluster"
    LOCAL = "local"


@dataclass(frozen=True, slots=True, order=True)
class ListenerKey:
    """One listener: a service port (its protocol included), an IP family, a scope."""

    name: ServicePortName
    family: IPFamily
    scope: Scope
    # Every sync looks up every listener: the hash is computed once, not per lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.name, self.family, self.scope)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.name}/{self.family.value}/{self.scope.value}"


@dataclass(frozen=True, slots=True)
class PortSelection:
    """Where one service port's traffic goes in one family.

    ``internal``: the listener scope for cluster-IP traffic; ``external``: for NodePort,
    external-IP and load-balancer traffic from elsewhere; ``external_from_node``: for the
    same addresses reached by this node's pods or the node itself. None: not forwarded; the
    filter table applies ``unserved`` (a REJECT or DROP target) to it.
    """

    view: FamilyServicePort
    cluster_targets: tuple[Target, ...]
    local_targets: tuple[Target, ...]
    internal: Scope | None
    external: Scope | None
    external_from_node: Scope | None
    unserved: str
    affinity_timeout: float | None

    def scopes(self) -> tuple[Scope, ...]:
        """The listeners this port needs, in a stable order."""
        used = {self.internal, self.external, self.external_from_node}
        return tuple(scope for scope in Scope if scope in used)

    def keys(self) -> tuple[ListenerKey, ...]:
        """The keys of the listeners this port needs, in the order of :meth:`scopes`."""
        return tuple(self.key(scope) for scope in self.scopes())

    def targets(self, scope: Scope) -> tuple[Target, ...]:
        return self.cluster_targets if scope is Scope.CLUSTER else self.local_targets

    def key(self, scope: Scope) -> ListenerKey:
        return ListenerKey(self.view.name, self.view.family, scope)


def select_port(
    view: FamilyServicePort,
    endpoints: tuple[Endpoint, ...],
    *,
    node_name: str,
    zone: str,
    prefer_same_node_hints: bool = False,
) -> PortSelection:
    """The selection for one port as ``view``'s family sees it; ``endpoints`` of that family."""
    categories = categorize_endpoints(
        endpoints,
        uses_cluster=view.uses_cluster_endpoints,
        uses_local=view.uses_local_endpoints,
        node_name=node_name,
        zone=zone,
        prefer_same_node_hints=prefer_same_node_hints,
    )
    has_any = categories.has_any
    has_local = bool(categories.local)
    internal: Scope | None = None
    if view.internal_policy_local:
        internal = Scope.LOCAL if has_local else None
    elif has_any:
        internal = Scope.CLUSTER
    external: Scope | None = None
    external_from_node: Scope | None = None
    if view.externally_accessible:
        if view.external_policy_local:
            external = Scope.LOCAL if has_local else None
            # iptables mode's EXT chain sends pods and the node to the Cluster endpoints
            # under eTP Local, whether or not this node has a local one.
            external_from_node = Scope.CLUSTER if categories.cluster else external
        elif has_any:
            external = external_from_node = Scope.CLUSTER
    return PortSelection(
        view=view,
        cluster_targets=tuple(Target(e.ip, e.port) for e in categories.cluster),
        local_targets=tuple(Target(e.ip, e.port) for e in categories.local),
        internal=internal,
        external=external,
        external_from_node=external_from_node,
        unserved=reject_target(view.family) if not has_any else "DROP",
        affinity_timeout=(
            float(view.affinity_seconds) if view.affinity_seconds is not None else None
        ),
    )
