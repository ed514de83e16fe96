"""What kproxy has installed on a lab node, in one compact line: its iptables chains counted
by kind (iptables mode), or the ports its process listens on and its portal rules
(userspace mode). The parsers are pure; :func:`node_summary` runs the tools in the node."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from kproxy.devcluster.lab import LabHost

CHAIN_PREFIX = "KPROXY-"
# Per-service chains end in a 16-character hash; everything else is one of kproxy's own.
_PER_SERVICE = re.compile(r"^(KPROXY-[A-Z0-9]+)-[A-Z0-9]{16}$")
_SAVE_PROGRAMS = ("iptables-nft-save", "iptables-legacy-save")
_PORTAL_TARGETS = ("REDIRECT", "DNAT")


@dataclass(frozen=True, slots=True)
class ChainCounts:
    per_service: dict[str, int]  # kind (KPROXY-SVC, KPROXY-SEP, ...) -> chains of that kind
    fixed: int  # kproxy's own chains (KPROXY-SERVICES, KPROXY-POSTROUTING, ...)

    def describe(self) -> str:
        """``1 KPROXY-EXT, 3 KPROXY-SEP, 1 KPROXY-SVC + 6 fixed chains``."""
        parts = [f"{count} {kind}" for kind, count in sorted(self.per_service.items())]
        return (", ".join(parts) or "no service chains") + f" + {self.fixed} fixed chains"


def chain_counts(save_text: str) -> ChainCounts:
    """kproxy's chains declared in ``iptables-save`` text: ``KPROXY-SVC-<hash>`` and the like
    counted by kind, the fixed ones in all."""
    per_service: Counter[str] = Counter()
    fixed = 0
    for line in save_text.splitlines():
        if not line.startswith(f":{CHAIN_PREFIX}"):
            continue
        match = _PER_SERVICE.match(line[1:].split()[0])
        if match:
            per_service[match.group(1)] += 1
        else:
            fixed += 1
    return ChainCounts(dict(per_service), fixed)


def portal_rules(save_text: str) -> int:
    """nat rules redirecting or translating traffic (the userspace mode's portals)."""
    return sum(1 for line in save_text.splitlines()
               if line.startswith("-A ") and any(f"-j {target}" in line
                                                 for target in _PORTAL_TARGETS))


def listening_ports(ss_text: str, pids: Iterable[int]) -> list[str]:
    """``tcp/39211``-style entries for the sockets of ``pids`` in ``ss -Hlntup`` output."""
    wanted = {f"pid={pid}," for pid in pids}
    found = []
    for line in ss_text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not any(pid in line for pid in wanted):
            continue
        port = fields[4].rsplit(":", 1)[-1]
        found.append(f"{fields[0]}/{port}")
    return sorted(set(found), key=lambda entry: (entry.split("/")[0], int(entry.split("/")[1])))


def node_summary(node: LabHost, mode: str, kproxy_pid: int | None) -> str:
    """One line: what kproxy has installed on ``node`` now."""
    save = _kproxy_save(node)
    if mode == "iptables":
        return chain_counts(save).describe()
    ss = node.ns.run(["ss", "-Hlntup"], check=False).stdout
    ports = listening_ports(ss, [kproxy_pid] if kproxy_pid is not None else [])
    shown = ", ".join(ports) if ports else "none"
    return f"listening on {shown}; {portal_rules(save)} portal rules in nat"


def _kproxy_save(node: LabHost) -> str:
    """The nat table of whichever iptables flavour holds kproxy's rules."""
    for program in _SAVE_PROGRAMS:
        done = node.ns.run([program, "-t", "nat"], check=False)
        if CHAIN_PREFIX in done.stdout:
            return done.stdout
    return ""
