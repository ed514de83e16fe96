"""A small routed cluster made of network namespaces: a fabric, nodes, pods, an outside client.

Topology (node ``i`` counts from 1; IPv6 only with ``ipv6=True``)::

    fabric namespace: bridge br0 (no address), one port per node (n<i>) and per other host
                      (out0, cp0)
    node<i>:   eth0 172.18.0.<10+i>/24, fc00:f853:ccd:e793::<10+i>/64 on the fabric
               cbr0 10.244.<i>.1/24, fd00:10:244:<i>::1/64 (the pods' gateway)
               forwarding on; one veth<k> port on cbr0 per pod (hairpin on); the other nodes'
               pod CIDRs reached over the overlay (``overlay="vxlan"``, the default) or by
               plain routes via their fabric IPs (``overlay="routes"``), see below
    overlay:   as flannel's vxlan backend: every node has a VXLAN device flannel.1 (VNI 1,
               UDP 8472, on eth0, no learning) with a fixed MAC 0e:6b:70:00:00:<i>; for each
               peer a permanent neighbour entry (its pod network address 10.244.<j>.0 and
               fd00:10:244:<j>:: -> its VTEP MAC), an FDB entry (that MAC -> its fabric IP)
               and an onlink route of its pod CIDR via that address on flannel.1; pods get
               the overlay's MTU (1450). Unlike flannel, flannel.1 has no address of its own:
               what the node itself sends to other nodes' pods leaves with its pod-bridge
               address (as the routed variant's does), so masqueraded traffic shows one of
               the node's addresses either way
    pod:       eth0 10.244.<i>.<k>/24 (k = 2, 3, ...), fd00:10:244:<i>::<k>/64, default via cbr0
    outside:   eth0 172.18.0.100/24, fc00:f853:ccd:e793::100/64; reaches node IPs, but has no
               route to any pod CIDR (like a client on the nodes' LAN)
    control-plane (optional): eth0 172.18.0.2/24, fc00:f853:ccd:e793::2/64, with routes to
               every pod CIDR (like kind's control-plane node, without pods): where the API
               server runs, reachable from nodes and pods (nothing links to the host)

Nothing is NATed by the lab itself: a server sees the client pod's own address.

Addresses and ``ip`` command lists are computed by pure functions; :class:`Lab` only runs them
(one ``ip -batch`` per namespace and step) and owns every namespace it creates.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kproxy.devcluster.netns import NetNamespace, Popen, random_tag, wait_for_line
from kproxy.devcluster.probe import ProbeResult, run_probe

OVERLAY_VXLAN = "vxlan"
OVERLAY_ROUTES = "routes"
OVERLAYS = (OVERLAY_VXLAN, OVERLAY_ROUTES)
VXLAN_DEVICE = "flannel.1"
VXLAN_ID = 1
VXLAN_PORT = 8472  # flannel's (the Linux default, not IANA's 4789)
VXLAN_MTU = 1450  # 1500 minus the outer IPv4, UDP and VXLAN headers and the inner Ethernet
FABRIC_BRIDGE = "br0"
POD_BRIDGE = "cbr0"
UPLINK = "eth0"  # a node's (or the outside client's) link on the fabric; a pod's only link
OUTSIDE_FABRIC_PORT = "out0"
CONTROL_PLANE_FABRIC_PORT = "cp0"

FABRIC_NET4 = ipaddress.IPv4Network("172.18.0.0/24")
FABRIC_NET6 = ipaddress.IPv6Network("fc00:f853:ccd:e793::/64")
NODE_HOST_OFFSET = 10  # node i is .10+i on the fabric (kind-like)
OUTSIDE_HOST = 100
CONTROL_PLANE_HOST = 2
MAX_NODES = OUTSIDE_HOST - NODE_HOST_OFFSET - 1
FIRST_POD_HOST = 2  # .1 is the node's bridge (the pods' gateway)
MAX_POD_HOST = 254

DEFAULT_SERVER_PORT = 8080
SERVER_READY_TIMEOUT = 15.0
PODSERVER_MODULE = "kproxy.devcluster.podserver"


# --- addressing (pure) ---------------------------------------------------------------------


def _fabric_address4(host: int) -> str:
    return str(FABRIC_NET4.network_address + host)


def _fabric_address6(host: int) -> str:
    # The same digits as the IPv4 host part (…::11 for 172.18.0.11), readable side by side.
    return str(ipaddress.IPv6Address(f"{FABRIC_NET6.network_address}{host}"))


@dataclass(frozen=True, slots=True)
class NodeAddressing:
    """Where node ``index`` (1-based) lives, in both families (IPv6 fields None when off)."""

    index: int
    name: str
    ip: str
    pod_cidr: str
    gateway: str
    ip6: str | None
    pod_cidr6: str | None
    gateway6: str | None

    @property
    def fabric_port(self) -> str:
        """Name of this node's port on the fabric bridge."""
        return f"n{self.index}"

    @classmethod
    def for_index(cls, index: int, *, ipv6: bool) -> NodeAddressing:
        if not 1 <= index <= MAX_NODES:
            raise ValueError(f"node index must be 1..{MAX_NODES}: {index}")
        host = NODE_HOST_OFFSET + index
        return cls(
            index=index,
            name=f"node{index}",
            ip=_fabric_address4(host),
            pod_cidr=f"10.244.{index}.0/24",
            gateway=f"10.244.{index}.1",
            ip6=_fabric_address6(host) if ipv6 else None,
            pod_cidr6=f"fd00:10:244:{index}::/64" if ipv6 else None,
            gateway6=f"fd00:10:244:{index}::1" if ipv6 else None,
        )

    @property
    def vtep_mac(self) -> str:
        """This node's VXLAN device MAC (locally administered, one per node index)."""
        return f"0e:6b:70:00:{self.index >> 8:02x}:{self.index & 0xFF:02x}"

    @property
    def overlay_address(self) -> str:
        """The next hop for this node's pod CIDR on the overlay (flannel: the network address)."""
        return str(ipaddress.ip_network(self.pod_cidr).network_address)

    @property
    def overlay_address6(self) -> str | None:
        if self.pod_cidr6 is None:
            return None
        return str(ipaddress.ip_network(self.pod_cidr6).network_address)

    def pod_addresses(self, host: int) -> tuple[str, str | None]:
        """IPv4 (and IPv6) address of the pod with host part ``host`` on this node."""
        if not FIRST_POD_HOST <= host <= MAX_POD_HOST:
            raise ValueError(f"pod host part must be {FIRST_POD_HOST}..{MAX_POD_HOST}: {host}")
        ip4 = f"10.244.{self.index}.{host}"
        ip6 = f"fd00:10:244:{self.index}::{host}" if self.pod_cidr6 is not None else None
        return ip4, ip6


def fabric_host_addresses(host: int, *, ipv6: bool) -> tuple[str, str | None]:
    """Addresses of a plain (non-node) host on the fabric."""
    return _fabric_address4(host), _fabric_address6(host) if ipv6 else None


def outside_addresses(*, ipv6: bool) -> tuple[str, str | None]:
    return fabric_host_addresses(OUTSIDE_HOST, ipv6=ipv6)


# --- ip command lists (pure) ---------------------------------------------------------------


def _addr(address: str, network: str, link: str) -> str:
    prefix = ipaddress.ip_network(network).prefixlen
    # nodad: usable at once instead of tentative for a second or two.
    suffix = " nodad" if ":" in address else ""
    return f"addr add {address}/{prefix} dev {link}{suffix}"


def fabric_commands(ports: Sequence[tuple[str, str]]) -> list[str]:
    """The fabric bridge plus, per ``(port, peer namespace)``, a veth whose peer is its eth0."""
    commands = [f"link add {FABRIC_BRIDGE} type bridge", f"link set {FABRIC_BRIDGE} up"]
    for port, peer_namespace in ports:
        commands += [
            f"link add {port} type veth peer name {UPLINK} netns {peer_namespace}",
            f"link set {port} master {FABRIC_BRIDGE} up",
        ]
    return commands


def check_overlay(overlay: str) -> str:
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay must be one of {OVERLAYS}: {overlay!r}")
    return overlay


def node_commands(node: NodeAddressing, others: Iterable[NodeAddressing],
                  overlay: str = OVERLAY_VXLAN) -> list[str]:
    """Inside a node: the pod bridge, the fabric address, and the way to the other pod CIDRs
    (the VXLAN device with its neighbours and routes, or plain routes)."""
    check_overlay(overlay)
    commands = [
        f"link add {POD_BRIDGE} type bridge",
        _addr(node.gateway, node.pod_cidr, POD_BRIDGE),
    ]
    if node.gateway6 and node.pod_cidr6:
        commands.append(_addr(node.gateway6, node.pod_cidr6, POD_BRIDGE))
    commands += [f"link set {POD_BRIDGE} up", _addr(node.ip, str(FABRIC_NET4), UPLINK)]
    if node.ip6:
        commands.append(_addr(node.ip6, str(FABRIC_NET6), UPLINK))
    commands.append(f"link set {UPLINK} up")
    # Like any real node, a default route: a service IP must be routable before kproxy's
    # DNAT rewrites it (locally generated packets are routed before nat OUTPUT runs).
    commands.append(f"route add default dev {UPLINK}")
    if node.ip6:
        commands.append(f"route add ::/0 dev {UPLINK}")
    if overlay == OVERLAY_ROUTES:
        return commands + _pod_routes(others)
    return commands + vxlan_commands(node, others)


def vxlan_commands(node: NodeAddressing, others: Iterable[NodeAddressing]) -> list[str]:
    """Inside a node: flannel.1, and per peer a neighbour entry and an onlink route (the FDB
    entries are :func:`vxlan_fdb_commands`: ``bridge``, not ``ip``)."""
    commands = [
        f"link add {VXLAN_DEVICE} address {node.vtep_mac} type vxlan id {VXLAN_ID} "
        f"local {node.ip} dev {UPLINK} dstport {VXLAN_PORT} nolearning",
        f"link set {VXLAN_DEVICE} mtu {VXLAN_MTU} up",
    ]
    for peer in others:
        hops = [(peer.overlay_address, peer.pod_cidr)]
        if node.pod_cidr6 and peer.overlay_address6 and peer.pod_cidr6:
            hops.append((peer.overlay_address6, peer.pod_cidr6))
        for hop, cidr in hops:
            commands += [
                f"neigh replace {hop} lladdr {peer.vtep_mac} dev {VXLAN_DEVICE} nud permanent",
                f"route add {cidr} via {hop} dev {VXLAN_DEVICE} onlink",
            ]
    return commands


def vxlan_fdb_commands(others: Iterable[NodeAddressing]) -> list[str]:
    """``bridge`` commands inside a node: each peer's VTEP MAC is behind its fabric IP."""
    return [f"fdb append {peer.vtep_mac} dev {VXLAN_DEVICE} dst {peer.ip}" for peer in others]


def node_sysctls(node: NodeAddressing) -> dict[str, int]:
    """Set before the node's links exist, so that they inherit the ``default`` values."""
    settings = {"net.ipv4.ip_forward": 1}
    if node.ip6:
        settings["net.ipv6.conf.all.forwarding"] = 1
        # A router solicits neighbours for forwarded packets from its link-local address;
        # while that is tentative (DAD, ~1-2 s) forwarding stalls. No DAD for any address.
        settings["net.ipv6.conf.all.accept_dad"] = 0
        settings["net.ipv6.conf.default.accept_dad"] = 0
    return settings


def local_address_commands(addresses: Iterable[str]) -> list[str]:
    """Inside a node: ``addresses`` made local to it, one host address each on its fabric
    link, as VIP-style load balancers (kube-vip) add their VIPs to a node's interface. Not
    on ``lo``: the kernel would take a masquerade address from ``lo`` first when the
    outgoing device has none of its own (flannel.1 here)."""
    return [_addr(address, str(ipaddress.ip_network(address)), UPLINK) for address in addresses]


def pod_mtu(overlay: str) -> int | None:
    """The MTU a pod's link needs (None: the default), so no packet outgrows the overlay."""
    return VXLAN_MTU if check_overlay(overlay) == OVERLAY_VXLAN else None


def pod_port_commands(port: str, pod_namespace: str, mtu: int | None = None) -> list[str]:
    """Inside the node: a veth on the pod bridge whose peer is the pod's eth0."""
    sizes = "" if mtu is None else f" mtu {mtu}"
    return [
        f"link add {port}{sizes} type veth peer name {UPLINK}{sizes} netns {pod_namespace}",
        f"link set {port} master {POD_BRIDGE} up",
        # As kubelet's hairpin mode does: a pod can reach itself through a service address.
        f"link set dev {port} type bridge_slave hairpin on",
    ]


def pod_commands(node: NodeAddressing, ip: str, ip6: str | None) -> list[str]:
    """Inside the pod: its address(es) on eth0 and a default route via the node's bridge."""
    commands = [_addr(ip, node.pod_cidr, UPLINK)]
    if ip6 and node.pod_cidr6:
        commands.append(_addr(ip6, node.pod_cidr6, UPLINK))
    commands += [f"link set {UPLINK} up", f"route add default via {node.gateway}"]
    if ip6 and node.gateway6:
        commands.append(f"route add default via {node.gateway6}")
    return commands


def fabric_host_commands(ip: str, ip6: str | None,
                         pod_routes_via: Iterable[NodeAddressing] = ()) -> list[str]:
    """Inside a plain fabric host: its address(es) on eth0 and, optionally, routes to the
    pod CIDRs of ``pod_routes_via`` (without them it reaches nothing beyond the fabric)."""
    commands = [_addr(ip, str(FABRIC_NET4), UPLINK)]
    if ip6:
        commands.append(_addr(ip6, str(FABRIC_NET6), UPLINK))
    commands.append(f"link set {UPLINK} up")
    return commands + _pod_routes(pod_routes_via)


def _pod_routes(nodes: Iterable[NodeAddressing]) -> list[str]:
    commands = []
    for node in nodes:
        commands.append(f"route add {node.pod_cidr} via {node.ip} dev {UPLINK}")
        if node.pod_cidr6 and node.ip6:
            commands.append(f"route add {node.pod_cidr6} via {node.ip6} dev {UPLINK}")
    return commands


# --- lab members ---------------------------------------------------------------------------


class LabHost:
    """Anything in the lab with its own namespace and address: a node, a pod, the outside.

    Each can run the pod server (on a node that is a host-network server) and the probe.
    """

    def __init__(self, name: str, ns: NetNamespace, ip: str, ip6: str | None) -> None:
        self.name = name
        self.ns = ns
        self.ip = ip
        self.ip6 = ip6
        self.server: Popen | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, ip={self.ip!r}, ns={self.ns.name!r})"

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip,) if self.ip6 is None else (self.ip, self.ip6)

    def probe(self, proto: str, host: str, port: int, **options: Any) -> list[ProbeResult]:
        """Run the probe client from this namespace (options: see :func:`run_probe`)."""
        return run_probe(self.ns, proto, host, port, **options)

    def start_server(self, *, tcp: Sequence[int] = (DEFAULT_SERVER_PORT,),
                     udp: Sequence[int] = (DEFAULT_SERVER_PORT,), sctp: Sequence[int] = (),
                     bind: str | None = None, version: str | None = None, wait: bool = True,
                     timeout: float = SERVER_READY_TIMEOUT) -> Popen:
        """Run the pod server here (named after this host, answering with ``version`` when
        given); with ``wait``, return once it listens on every port. It is stopped when the
        namespace is deleted."""
        if self.server is not None and self.server.poll() is None:
            raise RuntimeError(f"{self.name} already runs a server")
        args = ["--name", self.name]
        for flag, ports in (("--tcp", tcp), ("--udp", udp), ("--sctp", sctp)):
            for port in ports:
                args += [flag, str(port)]
        if bind is not None:
            args += ["--bind", bind]
        if version is not None:
            args += ["--app-version", version]
        self.server = self.ns.popen_python(PODSERVER_MODULE, *args, stdout=subprocess.PIPE)
        if wait:
            self.wait_server_ready(timeout)
        return self.server

    def wait_server_ready(self, timeout: float = SERVER_READY_TIMEOUT) -> None:
        if self.server is None:
            raise RuntimeError(f"{self.name} has no server")
        wait_for_line(self.server, "READY", timeout)

    def stop_server(self) -> None:
        if self.server is not None:
            self.ns.stop(self.server)
            self.server = None


class Node(LabHost):
    """A node: on the fabric with ``ip``, routing for its pods in ``pod_cidr``."""

    def __init__(self, addressing: NodeAddressing, ns: NetNamespace) -> None:
        super().__init__(addressing.name, ns, addressing.ip, addressing.ip6)
        self.addressing = addressing
        self.index = addressing.index
        self.pod_cidr = addressing.pod_cidr
        self.pod_cidr6 = addressing.pod_cidr6
        self.gateway = addressing.gateway
        self.gateway6 = addressing.gateway6
        self.pods: list[Pod] = []
        # Host parts are never reused, so a deleted pod's address stays unused in this lab.
        self._next_pod_host = FIRST_POD_HOST

    def add_local_addresses(self, *addresses: str) -> None:
        """Make ``addresses`` local to this node (see :func:`local_address_commands`)."""
        self.ns.ip_batch(local_address_commands(addresses))

    def allocate_pod_host(self) -> int:
        """The host part for the next pod on this node (2, 3, ...)."""
        host = self._next_pod_host
        self._next_pod_host += 1
        return host


class Pod(LabHost):
    """A pod: its own namespace on a veth into its node's bridge; ``node_link`` is the
    node-side end of that veth."""

    def __init__(self, name: str, node: Node, ns: NetNamespace, ip: str, ip6: str | None,
                 node_link: str) -> None:
        super().__init__(name, ns, ip, ip6)
        self.node = node
        self.node_link = node_link


class OutsideClient(LabHost):
    """A machine on the nodes' network that is not part of the cluster."""


class ControlPlane(LabHost):
    """Where the API server runs: on the fabric, reachable from every node and pod."""


# --- the lab -------------------------------------------------------------------------------


class Lab:
    """Builds the topology on enter (or :meth:`build`) and deletes every namespace on exit."""

    def __init__(self, nodes: int = 2, *, outside: bool = True, control_plane: bool = False,
                 ipv6: bool = False, overlay: str = OVERLAY_VXLAN,
                 tag: str | None = None) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}: {nodes}")
        self.overlay = check_overlay(overlay)
        self.node_count = nodes
        self.with_outside = outside
        self.with_control_plane = control_plane
        self.ipv6 = ipv6
        self.tag = tag or random_tag()
        self.nodes: list[Node] = []
        self.outside: OutsideClient | None = None
        self.control_plane: ControlPlane | None = None
        self._fabric: NetNamespace | None = None
        # Every namespace created, in creation order (teardown goes the other way).
        self._owned: list[NetNamespace] = []
        self._roles: set[str] = set()

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def fabric(self) -> NetNamespace:
        if self._fabric is None:
            raise RuntimeError("the lab is not built")
        return self._fabric

    @property
    def pods(self) -> list[Pod]:
        return [pod for node in self.nodes for pod in node.pods]

    def namespace_names(self) -> list[str]:
        """Names of every namespace this lab created and still owns."""
        return [ns.name for ns in self._owned]

    def build(self) -> Lab:
        if self._fabric is not None:
            return self
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        fabric = self._fabric = self._namespace("fabric")
        plans = [NodeAddressing.for_index(i, ipv6=self.ipv6) for i in range(1, self.node_count + 1)]
        node_namespaces = [self._namespace(plan.name) for plan in plans]
        for plan, ns in zip(plans, node_namespaces, strict=True):
            ns.sysctls(node_sysctls(plan))
        ports = [(plan.fabric_port, ns.name)
                 for plan, ns in zip(plans, node_namespaces, strict=True)]
        outside_ns = self._namespace("outside") if self.with_outside else None
        if outside_ns is not None:
            ports.append((OUTSIDE_FABRIC_PORT, outside_ns.name))
        control_ns = self._namespace("control-plane") if self.with_control_plane else None
        if control_ns is not None:
            ports.append((CONTROL_PLANE_FABRIC_PORT, control_ns.name))
        fabric.ip_batch(fabric_commands(ports))
        for plan, ns in zip(plans, node_namespaces, strict=True):
            others = [other for other in plans if other is not plan]
            ns.ip_batch(node_commands(plan, others, self.overlay))
            if self.overlay == OVERLAY_VXLAN:
                ns.bridge_batch(vxlan_fdb_commands(others))
            self.nodes.append(Node(plan, ns))
        if outside_ns is not None:
            ip, ip6 = outside_addresses(ipv6=self.ipv6)
            outside_ns.ip_batch(fabric_host_commands(ip, ip6))
            self.outside = OutsideClient("outside", outside_ns, ip, ip6)
        if control_ns is not None:
            ip, ip6 = fabric_host_addresses(CONTROL_PLANE_HOST, ipv6=self.ipv6)
            control_ns.ip_batch(fabric_host_commands(ip, ip6, pod_routes_via=plans))
            self.control_plane = ControlPlane("control-plane", control_ns, ip, ip6)

    def _namespace(self, role: str) -> NetNamespace:
        if role in self._roles:
            raise ValueError(f"name already used in this lab: {role!r}")
        ns = NetNamespace(role, tag=self.tag)
        self._roles.add(role)
        self._owned.append(ns)
        try:
            return ns.create()
        except BaseException:
            self._forget(ns)
            raise

    def node(self, which: Node | int | str) -> Node:
        """A node by object, 1-based index or name."""
        if isinstance(which, Node):
            return which
        for node in self.nodes:
            if which in (node.index, node.name):
                return node
        raise KeyError(f"no node {which!r} in this lab")

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(f"no pod {name!r} in this lab")

    def add_pod(self, node: Node | int | str, name: str) -> Pod:
        """A new pod on ``node`` with the next free address of its pod CIDR(s)."""
        owner = self.node(node)
        host = owner.allocate_pod_host()
        ip, ip6 = owner.addressing.pod_addresses(host)
        ns = self._namespace(name)
        link = f"veth{host}"
        try:
            owner.ns.ip_batch(pod_port_commands(link, ns.name, pod_mtu(self.overlay)))
            ns.ip_batch(pod_commands(owner.addressing, ip, ip6))
        except BaseException:
            self._forget(ns)
            raise
        pod = Pod(name, owner, ns, ip, ip6, link)
        owner.pods.append(pod)
        return pod

    def remove_pod(self, pod: Pod) -> None:
        """Stop the pod and delete its namespace (its veth pair goes with it)."""
        pod.node.pods.remove(pod)
        self._forget(pod.ns)

    def start_servers(self, pods: Iterable[Pod] | None = None, *,
                      timeout: float = SERVER_READY_TIMEOUT, **server_options: Any) -> None:
        """Start the pod server in several pods at once, then wait until all of them listen."""
        chosen = list(self.pods if pods is None else pods)
        for pod in chosen:
            pod.start_server(wait=False, **server_options)
        for pod in chosen:
            pod.wait_server_ready(timeout)

    def _forget(self, ns: NetNamespace) -> None:
        try:
            ns.close()
        finally:
            self._owned.remove(ns)
            self._roles.discard(ns.role)

    def close(self) -> None:
        """Delete every namespace of the lab (pods first); safe to call more than once."""
        errors: list[BaseException] = []
        for ns in reversed(self._owned):
            try:
                ns.close()
            except Exception as error:  # keep deleting the rest, report afterwards
                errors.append(error)
        self._owned.clear()
        self._roles.clear()
        for node in self.nodes:
            node.pods.clear()
        if errors:
            raise errors[0]

