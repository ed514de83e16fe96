"""Which endpoints a service port uses on this node (kube-proxy 1.33's CategorizeEndpoints).

- **Cluster** policy uses ready endpoints anywhere, narrowed by topology hints when they
  apply; with no ready endpoint at all it falls back to serving-and-terminating ones.
- **Local** policy uses this node's ready endpoints, or else this node's
  serving-and-terminating ones (the fallback is decided for Local on its own).
- **Topology hints** (zone) apply when every ready endpoint carries zone hints and at least
  one names this node's zone; then only endpoints hinted for the zone are used. 1.33 does
  not look at ``trafficDistribution`` or the topology annotation here: the EndpointSlice
  controller only writes hints when they ask for it. Node hints are only used when the
  PreferSameTrafficDistribution gate is on (off by default in 1.33).

``has_any`` tells whether the service has usable endpoints anywhere in the cluster; it
decides between REJECT (no endpoints) and DROP (none on this node) for unserved traffic.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from kproxy.model.types import Endpoint


class TopologyMode(enum.Enum):
    NONE = "none"
    PREFER_SAME_ZONE = "PreferSameZone"
    PREFER_SAME_NODE = "PreferSameNode"


@dataclass(frozen=True, slots=True)
class EndpointCategories:
    cluster: tuple[Endpoint, ...]  # for Cluster traffic policy (empty if never used)
    local: tuple[Endpoint, ...]  # for Local traffic policy (empty if never used)
    reachable: tuple[Endpoint, ...]  # union of the two, in the input order
    has_any: bool  # usable endpoints exist somewhere in the cluster


NO_ENDPOINTS = EndpointCategories((), (), (), False)


def categorize_endpoints(
    endpoints: tuple[Endpoint, ...],
    *,
    uses_cluster: bool,
    uses_local: bool,
    node_name: str,
    zone: str,
    prefer_same_node_hints: bool = False,
) -> EndpointCategories:
    """Split one service port's endpoints (of one family) by traffic policy.

    ``uses_cluster``/``uses_local`` are kube-proxy's UsesClusterEndpoints and
    UsesLocalEndpoints for the port as seen by this family.
    """
    if not endpoints:
        return NO_ENDPOINTS
    cluster: tuple[Endpoint, ...] = ()
    has_any = False
    mode = TopologyMode.NONE
    if uses_cluster:
        mode = topology_mode(endpoints, node_name, zone, prefer_same_node_hints)
        if mode is TopologyMode.NONE:
            ready = [endpoint for endpoint in endpoints if endpoint.ready]
            cluster = endpoints if len(ready) == len(endpoints) else tuple(ready)
        else:
            cluster = tuple(
                endpoint
                for endpoint in endpoints
                if endpoint.ready and available_for_topology(endpoint, mode, node_name, zone)
            )
        if not cluster:
            cluster = tuple(
                endpoint for endpoint in endpoints if endpoint.serving and endpoint.terminating
            )
        has_any = bool(cluster)
    if not uses_local:
        return EndpointCategories(cluster, (), cluster, has_any)

    local_ready = False
    local_terminating = False
    for endpoint in endpoints:
        usable = endpoint.ready or (endpoint.serving and endpoint.terminating)
        if usable:
            has_any = True
            if endpoint.node_name == node_name:
                if endpoint.ready:
                    local_ready = True
                else:
                    local_terminating = True
    local: tuple[Endpoint, ...] = ()
    if local_ready:
        local = tuple(e for e in endpoints if e.node_name == node_name and e.ready)
    elif local_terminating:
        local = tuple(
            e for e in endpoints if e.node_name == node_name and e.serving and e.terminating
        )
    if not uses_cluster:
        return EndpointCategories((), local, local, has_any)
    local_uses_terminating = local_terminating and not local_ready
    if mode is TopologyMode.NONE and not local_uses_terminating:
        # Local uses ready endpoints only, and ``cluster`` holds every ready endpoint.
        return EndpointCategories(cluster, local, cluster, has_any)
    members = {endpoint.address for endpoint in (*cluster, *local)}
    reachable = tuple(endpoint for endpoint in endpoints if endpoint.address in members)
    return EndpointCategories(cluster, local, reachable, has_any)


def topology_mode(
    endpoints: Sequence[Endpoint], node_name: str, zone: str, prefer_same_node_hints: bool
) -> TopologyMode:
    """kube-proxy's topologyModeFromHints: which hints, if any, narrow Cluster endpoints."""
    has_endpoint_for_node = False
    all_have_node_hints = True
    has_endpoint_for_zone = False
    all_have_zone_hints = True
    for endpoint in endpoints:
        if not endpoint.ready:
            continue
        if not endpoint.zone_hints and not prefer_same_node_hints:
            return TopologyMode.NONE  # the common case: no hints at all
        if not endpoint.node_hints:
            all_have_node_hints = False
        elif node_name in endpoint.node_hints:
            has_endpoint_for_node = True
        if not endpoint.zone_hints:
            all_have_zone_hints = False
        elif zone in endpoint.zone_hints:
            has_endpoint_for_zone = True
    if prefer_same_node_hints and all_have_node_hints and has_endpoint_for_node:
        return TopologyMode.PREFER_SAME_NODE
    if all_have_zone_hints and has_endpoint_for_zone:
        return TopologyMode.PREFER_SAME_ZONE
    return TopologyMode.NONE


def available_for_topology(
    endpoint: Endpoint, mode: TopologyMode, node_name: str, zone: str
) -> bool:
    if mode is TopologyMode.NONE:
        return True
    if mode is TopologyMode.PREFER_SAME_ZONE:
        return endpoint.zone_hints is not None and zone in endpoint.zone_hints
    return endpoint.node_hints is not None and node_name in endpoint.node_hints
