"""Cluster objects (Nodes, Services, EndpointSlices) for the iptables configuration variants.

Pure builders: they take where each pod lives (:class:`Placement`) and return API objects as
plain dicts, ready for the ``List`` file ``kproxy run --from-file`` reads. The test module
decides which lab and which kproxy flags go with which object set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WEB_PORT = 8080  # every pod server listens here (TCP and UDP) ...
ALT_PORT = 8081  # ... and here, for the second port of a multi-port service
ZONE_LABEL = "topology.kubernetes.io/zone"

EXTERNAL_IP = "203.0.113.10"
LB_IP = "203.0.113.20"
# Two ingress IPs of one externalTrafficPolicy Local service, routed to different nodes.
LB_LOCAL_IPS = ("203.0.113.31", "203.0.113.32")
HEALTH_CHECK_NODE_PORT = 32100
NODE_PORT = 30080
AFFINITY_SECONDS = 2

# Cluster IPs, one per service.
WEB_IP = "10.96.0.10"
NODE_PORT_IP = "10.96.0.30"
EXT_IP = "10.96.0.50"  # also has EXTERNAL_IP; its only endpoint is on node2
MULTI_IP = "10.96.1.10"
LB_CLUSTER_IP = "10.96.1.20"
ITP_IP = "10.96.1.30"
ITP_NODE1_IP = "10.96.1.31"
STICKY_IP = "10.96.1.40"
ZONAL_IP = "10.96.1.50"
ZONAL_PARTIAL_IP = "10.96.1.51"
SCTP_IP = "10.96.1.60"
LB_LOCAL_CLUSTER_IP = "10.96.2.10"

Object = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PodPlace:
    ip: str
    node: str


@dataclass(frozen=True, slots=True)
class NodePlace:
    name: str
    ip: str
    pod_cidr: str
    zone: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the lab put things: nodes, and each pod's address and node."""

    nodes: tuple[NodePlace, ...]
    pods: Mapping[str, PodPlace]


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    number: int = WEB_PORT
    protocol: str = "TCP"


HTTP = (SlicePort("http"),)


# --- single objects --------------------------------------------------------------------------


def node_object(node: NodePlace) -> Object:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {ZONE_LABEL: node.zone}},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]},
    }


def service(name: str, cluster_ip: str, ports: Sequence[Object], *,
            load_balancer_ips: Sequence[str] = (), **spec: Any) -> Object:
    built: Object = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": list(ports),
                 **spec},
    }
    if load_balancer_ips:
        built["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in load_balancer_ips]}}
    return built


def service_port(name: str, number: int, *, protocol: str = "TCP", target: int | str = WEB_PORT,
                 node_port: int | None = None) -> Object:
    entry: Object = {"name": name, "port": number, "protocol": protocol, "targetPort": target}
    if node_port is not None:
        entry["nodePort"] = node_port
    return entry


def endpoint_slice(service_name: str, placement: Placement, pods: Sequence[str],
                   ports: Sequence[SlicePort] = HTTP,
                   zone_hints: Mapping[str, str] | None = None) -> Object:
    """One ready endpoint per pod; ``zone_hints`` maps pods to the zone they are hinted for
    (pods left out get no hints)."""
    endpoints = []
    for pod in pods:
        place = placement.pods[pod]
        endpoint: Object = {"addresses": [place.ip], "nodeName": place.node,
                            "conditions": {"ready": True, "serving": True,
                                           "terminating": False}}
        zone = (zone_hints or {}).get(pod)
        if zone is not None:
            endpoint["zone"] = zone
            endpoint["hints"] = {"forZones": [{"name": zone}]}
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": port.name, "port": port.number, "protocol": port.protocol}
                  for port in ports],
        "endpoints": endpoints,
    }


def object_list(items: Sequence[Object]) -> Object:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


def nodes(placement: Placement) -> list[Object]:
    return [node_object(node) for node in placement.nodes]


# --- object sets, one per variant family ---------------------------------------------------


def web_service(placement: Placement) -> list[Object]:
    """``web`` (10.96.0.10:80): plain Cluster-policy service on web-1 and web-2."""
    return [service("web", WEB_IP, [service_port("http", 80)]),
            endpoint_slice("web", placement, ["web-1", "web-2"])]


def node_port_service(placement: Placement) -> list[Object]:
    """``np`` (10.96.0.30:80, NodePort 30080) on web-1 and web-2."""
    return [service("np", NODE_PORT_IP, [service_port("http", 80, node_port=NODE_PORT)],
                    type="NodePort"),
            endpoint_slice("np", placement, ["web-1", "web-2"])]


def behaviours(placement: Placement) -> list[Object]:
    """The services of the default-configuration variant."""
    both = ["web-1", "web-2"]
    objects = [*nodes(placement), *web_service(placement), *node_port_service(placement)]
    objects += [
        # Two ports with different target ports, one numeric and one named, plus UDP on the
        # same port number as one of the TCP ports.
        service("multi", MULTI_IP, [
            service_port("http", 80),
            service_port("alt", 90, target="alt-web"),
            service_port("alt-udp", 90, protocol="UDP", target="alt-web"),
        ]),
        endpoint_slice("multi", placement, both, [
            SlicePort("http"), SlicePort("alt", ALT_PORT), SlicePort("alt-udp", ALT_PORT, "UDP"),
        ]),
        service("itp", ITP_IP, [service_port("http", 80)], internalTrafficPolicy="Local"),
        endpoint_slice("itp", placement, both),
        service("itp-node1", ITP_NODE1_IP, [service_port("http", 80)],
                internalTrafficPolicy="Local"),
        endpoint_slice("itp-node1", placement, ["web-1"]),
        service("sticky", STICKY_IP, [service_port("http", 80)], sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": AFFINITY_SECONDS}}),
        endpoint_slice("sticky", placement, both),
        service("zonal", ZONAL_IP, [service_port("http", 80)]),
        endpoint_slice("zonal", placement, both,
                       zone_hints={"web-1": "zone-1", "web-2": "zone-2"}),
        service("zonal-partial", ZONAL_PARTIAL_IP, [service_port("http", 80)]),
        endpoint_slice("zonal-partial", placement, both, zone_hints={"web-1": "zone-1"}),
        # Programmed whether or not the kernel can carry SCTP.
        service("sctp", SCTP_IP, [service_port("sctp", 80, protocol="SCTP")]),
        endpoint_slice("sctp", placement, both, [SlicePort("sctp", WEB_PORT, "SCTP")]),
    ]
    return objects


def source_ranges(placement: Placement) -> list[Object]:
    """``lb`` (LB IP 203.0.113.20) open to the outside client's first address and to the
    nodes' addresses (172.18.0.0/28), not to 172.18.0.101 nor to pods."""
    return [
        *nodes(placement),
        service("lb", LB_CLUSTER_IP, [service_port("http", 80, node_port=30100)],
                type="LoadBalancer", load_balancer_ips=[LB_IP],
                loadBalancerSourceRanges=["172.18.0.100/32", "172.18.0.0/28"]),
        endpoint_slice("lb", placement, ["web-1", "web-2"]),
    ]


def node_ports(placement: Placement) -> list[Object]:
    """For the NodePort address variants: the nodes and one NodePort service."""
    return [*nodes(placement), *web_service(placement), *node_port_service(placement)]


def local_detection(placement: Placement) -> list[Object]:
    """For the local-traffic detection variants: ``web``, and ``ext`` (with an external IP)
    whose only endpoint is on node2."""
    return [
        *nodes(placement), *web_service(placement),
        service("ext", EXT_IP, [service_port("http", 80)], externalIPs=[EXTERNAL_IP]),
        endpoint_slice("ext", placement, ["web-2"]),
    ]


def local_load_balancer(placement: Placement) -> list[Object]:
    """``lb-local``: LoadBalancer, externalTrafficPolicy Local, its only endpoint on node2."""
    return [
        *nodes(placement),
        service("lb-local", LB_LOCAL_CLUSTER_IP, [service_port("http", 80, node_port=30200)],
                type="LoadBalancer", externalTrafficPolicy="Local",
                healthCheckNodePort=HEALTH_CHECK_NODE_PORT, load_balancer_ips=LB_LOCAL_IPS),
        endpoint_slice("lb-local", placement, ["web-2"]),
    ]
