"""Where a relay may send traffic: one endpoint address and port, and which ones it must not."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kproxy.model.types import IPFamily


@dataclass(frozen=True, slots=True)
class Target:
    ip: str
    port: int

    @property
    def family(self) -> IPFamily:
        return IPFamily.IPV6 if ":" in self.ip else IPFamily.IPV4

    def __str__(self) -> str:
        if self.family is IPFamily.IPV6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


def refusal_reason(ip: str) -> str | None:
    """Why an endpoint address must never be dialled, or None if it may be.

    A relay runs on the node with the node's privileges: dialling loopback would reach the
    node's own private services, link-local reaches cloud metadata servers, and
    unspecified/multicast addresses are not endpoints at all. kube-proxy refuses the same.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return f"{ip} is the unspecified address"
    if address.is_loopback:
        return f"{ip} is a loopback address"
    if address.is_link_local:
        return f"{ip} is a link-local address"
    if address.is_multicast:
        return f"{ip} is a multicast address"
    return None
