"""How iptables-save spells the pieces of kproxy's rules.

The planner keeps every rule exactly as ``iptables-save`` prints it back (see
:mod:`kproxy.iptables.ruleset`), so that a planned chain and the kernel's copy compare equal
as strings. iptables-save normalises what iptables-restore was given:

- the IP-header matches come first and in a fixed order: ``-s``, ``-d``, ``-i``, ``-o``,
  ``-p`` (each with its ``!``), whatever order they were written in;
- host addresses get a prefix length (``-s 10.1.2.3`` prints ``-s 10.1.2.3/32``);
- comments are quoted unless they consist of ``[A-Za-z0-9_-]`` only;
- targets and matches print their defaults: ``REJECT --reject-with icmp-port-unreachable``,
  ``MARK --or-mark M`` as ``--set-xmark M/M``, ``recent`` with ``--mask`` and ``--rsource``;
- ``statistic --probability`` is stored by the kernel as a 31-bit fraction and printed with
  eleven decimals.

Verified against iptables 1.8 (nft and legacy) by ``tests/unit/test_iptables_plan_kernel.py``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from kproxy.model.types import IPFamily, Protocol

_UNQUOTED = re.compile("[_0-9a-zA-Z-]+")
_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "'": "\\'"})

# The kernel keeps a statistic match's probability as round(p * 2^31) (xt_statistic).
_STATISTIC_SCALE = 0x80000000

LOOPBACK_CIDR = {IPFamily.IPV4: "127.0.0.0/8", IPFamily.IPV6: "::1/128"}
_HOST_PREFIX = {IPFamily.IPV4: "/32", IPFamily.IPV6: "/128"}
_REJECT = {
    IPFamily.IPV4: "REJECT --reject-with icmp-port-unreachable",
    IPFamily.IPV6: "REJECT --reject-with icmp6-port-unreachable",
}
_RECENT_MASK = {
    IPFamily.IPV4: "--mask 255.255.255.255 --rsource",
    IPFamily.IPV6: "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource",
}
PROTOCOL_NAME = {protocol: protocol.value.lower() for protocol in Protocol}


def comment(text: str) -> str:
    """``-m comment --comment TEXT`` quoted as iptables-save quotes it."""
    return f"-m comment --comment {quote(text)}"


def quote(text: str) -> str:
    """A word as xtables_save_string prints it: bare if it is safe, else in double quotes."""
    if _UNQUOTED.fullmatch(text):
        return text
    if '"' in text or "\\" in text or "'" in text:
        text = text.translate(_ESCAPES)
    return f'"{text}"'


def host(ip: str, family: IPFamily) -> str:
    """One address as a single-host CIDR (``10.1.2.3/32``, ``fd00::1/128``)."""
    return ip + _HOST_PREFIX[family]


def reject_target(family: IPFamily) -> str:
    return _REJECT[family]


def recent_mask(family: IPFamily) -> str:
    """The defaults iptables-save prints after ``-m recent ... --name N``."""
    return _RECENT_MASK[family]


def dnat_destination(ip: str, port: int) -> str:
    """``--to-destination`` argument: ``ip:port``, ``[ip]:port`` for IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@lru_cache(maxsize=4096)
def probability(count: int) -> str:
    """The ``--probability`` of choosing the first of ``count`` remaining endpoints.

    kube-proxy writes ``%0.10f`` of ``1/count``; the kernel stores that rounded to a 31-bit
    fraction (ties away from zero, as lround) and iptables-save prints the stored value with
    eleven decimals. We keep the printed form: the same kernel rule, and what a save reads.
    """
    written = float(f"{1.0 / count:0.10f}")
    stored = int(written * _STATISTIC_SCALE + 0.5)
    return f"{stored / _STATISTIC_SCALE:.11f}"


def port_match(protocol: Protocol, port: int) -> str:
    """The protocol match with a destination port, as printed after the other matches."""
    name = PROTOCOL_NAME[protocol]
    return f"-m {name} --dport {port}"
