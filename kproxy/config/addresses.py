"""IP addresses, CIDRs and listen addresses as kube-proxy accepts them, in normalised form.

Everything returned is a string in ``ipaddress``'s compressed form (the convention of the
model records); CIDRs are reduced to their network address, as Go's ``net.ParseCIDR`` does.
Each function raises ``ValueError`` with a message meant to follow a field name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Go's net.ParseCIDR wants "address/decimal-prefix"; ipaddress is laxer (netmasks, no slash).
_CIDR_SHAPE = re.compile(r"[0-9A-Fa-f:.]+/[0-9]{1,3}")
_PORT_SHAPE = re.compile(r"[0-9]{1,5}")


def parse_ip(text: str) -> str:
    """A literal IPv4 or IPv6 address (no zone, no brackets), normalised."""
    if "%" in text or not text:
        raise ValueError(f"must be an IP address, got {text!r}")
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise ValueError(f"must be an IP address, got {text!r}") from None


def parse_cidr(text: str) -> IPNetwork:
    """An IPv4 or IPv6 CIDR; host bits are allowed and cleared (``10.1.2.3/8`` → ``10.0.0.0/8``)."""
    if _CIDR_SHAPE.fullmatch(text) is None:
        raise ValueError(f"must be a CIDR such as 10.0.0.0/8 or fd00::/64, got {text!r}")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"must be a CIDR such as 10.0.0.0/8 or fd00::/64, got {text!r}") from None


def parse_cluster_cidrs(items: Sequence[str]) -> tuple[str, ...]:
    """One CIDR, or a dual-stack pair (one IPv4 and one IPv6), as kube-proxy allows."""
    networks = [parse_cidr(item) for item in items]
    if len(networks) > 2:
        raise ValueError(
            "must be one CIDR or a dual-stack pair such as 10.244.0.0/16,fd00:10:244::/56, "
            f"got {len(networks)} CIDRs"
        )
    if len(networks) == 2 and networks[0].version == networks[1].version:
        raise ValueError(
            "two CIDRs must be one IPv4 and one IPv6 (a dual-stack pair), got "
            f"{networks[0].compressed},{networks[1].compressed}"
        )
    return tuple(network.compressed for network in networks)


NODEPORT_ADDRESSES_PRIMARY = "primary"


def parse_nodeport_addresses(items: Sequence[str]) -> tuple[str, ...]:
    """CIDRs, or the single keyword ``primary`` (the Node's primary IPs); empty means all IPs."""
    if NODEPORT_ADDRESSES_PRIMARY in items:
        if len(items) != 1:
            raise ValueError(
                f"{NODEPORT_ADDRESSES_PRIMARY!r} cannot be combined with CIDRs, "
                f"got {','.join(items)}"
            )
        return (NODEPORT_ADDRESSES_PRIMARY,)
    normalised: list[str] = []
    for item in items:
        cidr = parse_cidr(item).compressed
        if cidr not in normalised:
            normalised.append(cidr)
    return tuple(normalised)


def parse_listen_address(text: str, default_port: int) -> str:
    """``IP:port``, ``[IPv6]:port`` or a bare IP (which gets ``default_port``); normalised.

    The host must be a literal IP, as kube-proxy requires for its health and metrics servers.
    """
    host, port = _split_host_port(text, default_port)
    address = parse_ip(host)
    if _PORT_SHAPE.fullmatch(port) is None or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port!r} in {text!r}")
    return f"[{address}]:{int(port)}" if ":" in address else f"{address}:{int(port)}"


def _split_host_port(text: str, default_port: int) -> tuple[str, str]:
    shape_error = ValueError(f"must be IP:port (for example 0.0.0.0:10256), got {text!r}")
    try:
        parse_ip(text)
    except ValueError:
        pass
    else:
        return text, str(default_port)
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise shape_error
        return host, port
    host, colon, port = text.rpartition(":")
    if not colon or ":" in host:
        raise shape_error
    return host, port
