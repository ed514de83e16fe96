"""Telling traffic from this node's pods apart from other traffic (kube-proxy's local detectors).

A detector is a pair of IP-header matches, already in iptables-save form: one that matches
pod traffic (``-s CIDR``, ``-i cbr0``, ``-i veth+``) and its negation. The matches are
IP-header matches, so iptables-save prints them in the rule's header, before ``-m``
matches; :func:`with_source_match` puts them there.

Without a usable detector (no mode, or no CIDR of this family) nothing is detected: ClusterIP
traffic is then not masqueraded unless ``--masquerade-all``, and externalTrafficPolicy Local
services lose their pod short-circuit, as in kube-proxy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kproxy.config.record import DetectLocalMode, ProxyConfig
from kproxy.model.types import IPFamily, NodeInfo


@dataclass(frozen=True, slots=True)
class LocalTrafficDetector:
    """Matches for pod traffic (``if_local``) and everything else (``if_not_local``).

    Each is a single IP-header match: ``-s CIDR`` / ``-i NAME`` or its ``!`` form. Empty
    strings mean the detector is not implemented.
    """

    if_local: str = ""
    if_not_local: str = ""

    @property
    def implemented(self) -> bool:
        return bool(self.if_local)

    @classmethod
    def by_cidr(cls, cidr: str) -> LocalTrafficDetector:
        return cls(f"-s {cidr}", f"! -s {cidr}")

    @classmethod
    def by_interface(cls, interface: str) -> LocalTrafficDetector:
        return cls(f"-i {interface}", f"! -i {interface}")


NO_DETECTION = LocalTrafficDetector()


def local_traffic_detector(
    config: ProxyConfig, node: NodeInfo | None, family: IPFamily
) -> LocalTrafficDetector:
    """The detector kube-proxy would build for ``family`` from the same configuration."""
    mode = config.detect_local_mode
    if mode is DetectLocalMode.CLUSTER_CIDR:
        cidr = _first_of_family(config.cluster_cidrs, family)
        return LocalTrafficDetector.by_cidr(cidr) if cidr else NO_DETECTION
    if mode is DetectLocalMode.NODE_CIDR:
        cidr = _first_of_family(node.pod_cidrs if node else (), family)
        return LocalTrafficDetector.by_cidr(cidr) if cidr else NO_DETECTION
    if mode is DetectLocalMode.BRIDGE_INTERFACE and config.pod_bridge_interface:
        return LocalTrafficDetector.by_interface(config.pod_bridge_interface)
    if mode is DetectLocalMode.INTERFACE_NAME_PREFIX and config.pod_interface_name_prefix:
        return LocalTrafficDetector.by_interface(config.pod_interface_name_prefix + "+")
    return NO_DETECTION


def with_source_match(header: str, detector_match: str) -> str:
    """Insert a detector match into a rule header as iptables-save orders it.

    ``header`` is the rule's IP-header part (``-d VIP/32 -p tcp`` or empty); a source match
    goes first, an interface match after the destination and before the protocol.
    """
    if not detector_match:
        return header
    if detector_match.lstrip("! ").startswith("-s"):
        return f"{detector_match} {header}" if header else detector_match
    before, protocol, after = header.partition("-p ")
    if not protocol:
        return f"{header} {detector_match}" if header else detector_match
    return f"{before}{detector_match} -p {after}"


def _first_of_family(cidrs: tuple[str, ...], family: IPFamily) -> str | None:
    version = 4 if family is IPFamily.IPV4 else 6
    for cidr in cidrs:
        if ipaddress.ip_network(cidr, strict=False).version == version:
            return cidr
    return None
