"""Which UDP conntrack entries are stale (pure).

This follows kube-proxy 1.33's conntrack reconciler (``pkg/proxy/conntrack/cleanup.go``),
run after every successful sync, once per IP family:

* Only UDP service ports count, and only those with at least one *serving* endpoint of that
  family. Traffic policies, topology and the terminating state are ignored on purpose:
  existing flows to a serving endpoint are left alone, as they are for TCP.
* A flow is stale when its original destination is a service frontend (ClusterIP,
  external IP or load-balancer VIP, with the service port) and its reply source (the
  endpoint it was DNATed to, address *and* port) is not a serving endpoint of that port.
* Independently, a flow is stale when its original destination port is a UDP NodePort
  (to any destination address) and its reply source is not a serving endpoint of it.

kube-proxy 1.33 deletes them with netlink filters built from each stale flow (original
destination and port, reply source and port; no destination for NodePorts); deleting the
listed flows themselves, as later releases do, differs only for flows created while the
reconcile runs, which the next one catches.

Consequently kube-proxy 1.33 does *not* touch flows of a service scaled to zero serving
endpoints, nor of a deleted service: those flows keep their old DNAT until they time out
(a steady one-way sender keeps them alive; later upstream releases fixed this).
``clear_services_without_endpoints`` opts into that later behaviour: such services, and
the ``deleted_services`` the caller names, are treated as having an empty set of serving
endpoints, so every flow DNATed from them is stale and the REJECT rule takes over.

Where several services claim one frontend (two services sharing an external IP and port),
kube-proxy keeps one of them at random; here their endpoint sets are merged, which is
deterministic and never deletes a flow that any of them still serves.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from kproxy.model.addresses import normalize_ip
from kproxy.model.types import IPFamily, Protocol, ServicePort
from kproxy.state import Snapshot

UDP: Final = "udp"
FAMILY_FLAGS: Final = {IPFamily.IPV4: "ipv4", IPFamily.IPV6: "ipv6"}
_FAMILY_BY_FLAG: Final = {flag: family for family, flag in FAMILY_FLAGS.items()}

Backend = tuple[str, int]  # (endpoint IP, endpoint port)


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One conntrack flow: its original tuple and its reply tuple.

    For a DNATed flow the reply source is the endpoint the flow was sent to.
    Addresses are in the model's normalised form.
    """

    family: IPFamily
    protocol: str  # conntrack's name for it: "udp", "tcp", ...
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    zone: int = 0  # conntrack zone (``zone=`` in the listing); 0 is the default zone


@dataclass(slots=True)
class _FamilyBackends:
    """Serving endpoints per frontend, for one IP family."""

    by_frontend: dict[tuple[str, int], set[Backend]] = field(default_factory=dict)
    by_node_port: dict[int, set[Backend]] = field(default_factory=dict)


# --- parsing `conntrack -L -o extended` ------------------------------------------------------


# Protocols with ports print each direction as "src=… dst=… sport=… dport=…"; accounting
# (packets=, bytes=) and flags ([UNREPLIED], [ASSURED]) may sit between and after them.
_TUPLE: Final = r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)"
_FLOW_LINE: Final = re.compile(
    rf"^\s*(?:(ipv4|ipv6)\s+\d+\s+)?(\S+)\s.*?{_TUPLE}\s.*?{_TUPLE}(?:\s|$)", re.ASCII)
_ZONE: Final = re.compile(r"\szone=(\d+)", re.ASCII)


def parse_entry(line: str) -> ConntrackEntry | None:
    """One line of ``conntrack -L`` (``-o extended`` or plain); None if it has no ports.

    ``ipv4 2 udp 17 29 src=A dst=B sport=P dport=Q [UNREPLIED] src=C dst=D sport=R
    dport=S mark=0 use=1``: the first tuple is the original direction, the second the
    reply direction, whatever else is on the line (state, flags, accounting, ids).
    """
    match = _FLOW_LINE.match(line)
    if match is None:
        return None
    (family_flag, protocol, orig_src, orig_dst, orig_sport, orig_dport,
     reply_src, reply_dst, reply_sport, reply_dport) = match.groups()
    src, dst = normalize_ip(orig_src), normalize_ip(orig_dst)
    back_src, back_dst = normalize_ip(reply_src), normalize_ip(reply_dst)
    if src is None or dst is None or back_src is None or back_dst is None:
        return None
    ports = (int(orig_sport), int(orig_dport), int(reply_sport), int(reply_dport))
    if max(ports) > 65535:
        return None
    zone = _ZONE.search(line, match.end() - 1)
    family = (_FAMILY_BY_FLAG[family_flag] if family_flag is not None
              else IPFamily.IPV6 if ":" in src else IPFamily.IPV4)
    return ConntrackEntry(
        family, protocol, src, dst, ports[0], ports[1], back_src, back_dst, ports[2], ports[3],
        zone=int(zone.group(1)) if zone is not None else 0,
    )


def parse_listing(text: str) -> tuple[list[ConntrackEntry], int]:
    """All entries of a ``conntrack -L`` output, and how many non-empty lines did not parse."""
    entries: list[ConntrackEntry] = []
    unparsed = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = parse_entry(line)
        if entry is None:
            unparsed += 1
        else:
            entries.append(entry)
    return entries, unparsed


# --- the plan ------------------------------------------------------------------------------


def stale_udp_flows(
    snapshot: Snapshot,
    entries: Iterable[ConntrackEntry],
    *,
    node_ips: Collection[str] | None = None,
    clear_services_without_endpoints: bool = False,
    deleted_services: Iterable[ServicePort] = (),
) -> list[ConntrackEntry]:
    """The stale UDP flows among ``entries``, in their order.

    ``node_ips`` None matches NodePort flows on any destination, as kube-proxy does; a
    collection restricts them to those destinations. See the module docstring for the
    other options.
    """
    backends = _serving_backends(
        snapshot, clear_services_without_endpoints,
        deleted_services if clear_services_without_endpoints else (),
    )
    node_destinations = None if node_ips is None else {normalize_ip(ip) for ip in node_ips}
    stale: list[ConntrackEntry] = []
    for entry in entries:
        if entry.protocol != UDP:
            continue
        family_backends = backends.get(entry.family)
        if family_backends is None:
            continue
        reply_backend = (entry.reply_src, entry.reply_sport)
        serving = family_backends.by_frontend.get((entry.orig_dst, entry.orig_dport))
        if serving is not None and reply_backend not in serving:
            stale.append(entry)
            continue
        serving = family_backends.by_node_port.get(entry.orig_dport)
        if (
            serving is not None
            and reply_backend not in serving
            and (node_destinations is None or entry.orig_dst in node_destinations)
        ):
            stale.append(entry)
    return stale


def _serving_backends(
    snapshot: Snapshot,
    include_without_endpoints: bool,
    deleted_services: Iterable[ServicePort],
) -> dict[IPFamily, _FamilyBackends]:
    backends = {family: _FamilyBackends() for family in IPFamily}
    for service_port, deleted in _with_deleted(snapshot.services.values(), deleted_services):
        if service_port.protocol is not Protocol.UDP:
            continue
        endpoints = () if deleted else snapshot.endpoints_of(service_port.name)
        for family, family_backends in backends.items():
            # kube-proxy runs one proxier per family, which only knows services with a
            # ClusterIP of its family and endpoints of its family.
            cluster_ip = _of_family(service_port.cluster_ips, family)
            if not cluster_ip:
                continue
            serving = {
                (endpoint.ip, endpoint.port) for endpoint in endpoints
                if endpoint.serving and endpoint.family is family
            }
            if not serving and not include_without_endpoints:
                continue
            frontends = [cluster_ip[0]]
            frontends += _of_family(service_port.load_balancer_ips, family)
            frontends += _of_family(service_port.external_ips, family)
            for ip in frontends:
                family_backends.by_frontend.setdefault((ip, service_port.port), set()).update(
                    serving)
            if service_port.node_port is not None:
                family_backends.by_node_port.setdefault(service_port.node_port, set()).update(
                    serving)
    return {family: found for family, found in backends.items()
            if found.by_frontend or found.by_node_port}


def _with_deleted(
    current: Iterable[ServicePort], deleted: Iterable[ServicePort]
) -> Iterator[tuple[ServicePort, bool]]:
    for service_port in deleted:
        yield service_port, True
    for service_port in current:
        yield service_port, False


def _of_family(addresses: Iterable[str], family: IPFamily) -> list[str]:
    want_v6 = family is IPFamily.IPV6
    return [ip for ip in addresses if (":" in ip) is want_v6]
