"""A service port as one IP family's proxier sees it (kube-proxy's BaseServicePortInfo).

Each family keeps only its own addresses: the cluster IP of the family (a port without one
is not programmed in that family at all), external IPs, load-balancer IPs and source
ranges of the family. A zero CIDR among the source ranges means "allow all", the same as
no ranges. Whether the port is externally accessible is decided per family too.
"""

from __future__ import annotations

from dataclasses import dataclass

from kproxy.iptables.rulesyntax import PROTOCOL_NAME
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    ServicePort,
    ServicePortName,
    SessionAffinity,
    TrafficPolicy,
)

_ZERO_CIDRS = frozenset({"0.0.0.0/0", "::/0"})


@dataclass(frozen=True, slots=True)
class FamilyServicePort:
    port: ServicePort
    family: IPFamily
    cluster_ip: str
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    name_text: str  # "ns/name:port" (kube-proxy's ServicePortName.String()), for comments
    protocol: str  # "tcp", "udp", "sctp"

    @property
    def name(self) -> ServicePortName:
        return self.port.name

    @property
    def externally_accessible(self) -> bool:
        return (
            self.port.node_port is not None
            or bool(self.external_ips)
            or bool(self.load_balancer_ips)
        )

    @property
    def external_policy_local(self) -> bool:
        return self.port.external_traffic_policy is TrafficPolicy.LOCAL

    @property
    def internal_policy_local(self) -> bool:
        return self.port.internal_traffic_policy is TrafficPolicy.LOCAL

    @property
    def uses_cluster_endpoints(self) -> bool:
        # External traffic always needs Cluster endpoints: pods and the node itself are
        # short-circuited to them even under externalTrafficPolicy Local.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (
            self.external_policy_local and self.externally_accessible
        )

    @property
    def affinity_seconds(self) -> int | None:
        """The ClientIP affinity timeout, or None without session affinity."""
        if self.port.session_affinity is SessionAffinity.CLIENT_IP:
            return self.port.affinity_timeout_seconds
        return None


def family_view(port: ServicePort, family: IPFamily) -> FamilyServicePort | None:
    """The port as ``family`` sees it, or None when it has no cluster IP of that family."""
    ipv6 = family is IPFamily.IPV6
    cluster_ip = next((ip for ip in port.cluster_ips if (":" in ip) == ipv6), None)
    if cluster_ip is None:
        return None
    ranges = port.load_balancer_source_ranges
    source_ranges = tuple(cidr for cidr in ranges if (":" in cidr) == ipv6)
    if _ZERO_CIDRS.intersection(source_ranges):
        source_ranges = ()
    name = port.name
    return FamilyServicePort(
        port=port,
        family=family,
        cluster_ip=cluster_ip,
        external_ips=tuple(ip for ip in port.external_ips if (":" in ip) == ipv6),
        load_balancer_ips=tuple(ip for ip in port.load_balancer_ips if (":" in ip) == ipv6),
        source_ranges=source_ranges,
        name_text=f"{name.namespace}/{name.name}:{name.port}"
        if name.port
        else f"{name.namespace}/{name.name}",
        protocol=PROTOCOL_NAME[port.protocol],
    )


def family_endpoints(endpoints: tuple[Endpoint, ...], family: IPFamily) -> tuple[Endpoint, ...]:
    """The endpoints of ``family`` (slices of both address types merge into one list)."""
    ipv6 = family is IPFamily.IPV6
    kept = [endpoint for endpoint in endpoints if (":" in endpoint.ip) == ipv6]
    return endpoints if len(kept) == len(endpoints) else tuple(kept)
