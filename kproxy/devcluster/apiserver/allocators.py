"""ClusterIP and NodePort allocation, with reservations that commit or roll back together.

A write that allocates (a Service create or update) reserves addresses and ports as it goes;
if a later step fails, or the request is a dry run, everything it reserved is given back.
Releases are deferred to the commit, so a failed update never frees what the old object holds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Random probes before falling back to a scan: a near-full range still allocates, just slower.
_RANDOM_PROBES = 64


class AllocationError(Exception):
    """A requested value is outside the range or taken, or the range is full."""

    def __init__(self, message: str, *, range_full: bool = False) -> None:
        super().__init__(message)
        self.range_full = range_full


def family_of(network: IPNetwork) -> str:
    return "IPv4" if network.version == 4 else "IPv6"


class IPAllocator:
    """Addresses of one service CIDR; the network address (and IPv4 broadcast) are never used."""

    def __init__(self, cidr: str, rng: random.Random) -> None:
        self.network: IPNetwork = ipaddress.ip_network(cidr, strict=True)
        self.family = family_of(self.network)
        self._first = int(self.network.network_address) + 1
        last = int(self.network.broadcast_address)
        self._last = last - 1 if self.network.version == 4 else last
        if self._last < self._first:
            raise ValueError(f"service CIDR {cidr} is too small")
        self._used: set[int] = set()
        self._rng = rng

    @property
    def size(self) -> int:
        return self._last - self._first + 1

    @property
    def used(self) -> int:
        return len(self._used)

    def contains(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return address.version == self.network.version and self._first <= int(address) <= self._last

    def is_allocated(self, ip: str) -> bool:
        return int(ipaddress.ip_address(ip)) in self._used

    def allocate(self, ip: str) -> str:
        address = ipaddress.ip_address(ip)
        if not self.contains(ip):
            raise AllocationError(
                f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid "
                f"range. The range of valid IPs is {self.network}"
            )
        if int(address) in self._used:
            raise AllocationError(f"failed to allocate IP {ip}: provided IP is already allocated")
        self._used.add(int(address))
        return str(address)

    def allocate_next(self) -> str:
        if len(self._used) >= self.size:
            raise AllocationError("failed to allocate a serviceIP: range is full", range_full=True)
        for _ in range(_RANDOM_PROBES):
            candidate = self._rng.randint(self._first, self._last)
            if candidate not in self._used:
                self._used.add(candidate)
                return str(ipaddress.ip_address(candidate))
        start = self._rng.randint(self._first, self._last)
        for offset in range(self.size):
            candidate = self._first + (start - self._first + offset) % self.size
            if candidate not in self._used:
                self._used.add(candidate)
                return str(ipaddress.ip_address(candidate))
        raise AllocationError("failed to allocate a serviceIP: range is full", range_full=True)

    def release(self, ip: str) -> None:
        with contextlib.suppress(ValueError):
            self._used.discard(int(ipaddress.ip_address(ip)))

    def mark_used(self, ip: str) -> bool:
        """Record an address found in stored state; False if it is not ours to track."""
        try:
            if not self.contains(ip):
                return False
        except ValueError:
            return False
        self._used.add(int(ipaddress.ip_address(ip)))
        return True


class PortAllocator:
    """Node ports of one range (30000-32767 by default), shared by every protocol."""

    def __init__(self, first: int, last: int, rng: random.Random) -> None:
        if not 0 < first <= last <= 65535:
            raise ValueError(f"invalid node port range {first}-{last}")
        self.first = first
        self.last = last
        self._used: set[int] = set()
        self._rng = rng

    @property
    def range_text(self) -> str:
        return f"{self.first}-{self.last}"

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, port: int) -> bool:
        return self.first <= port <= self.last

    def is_allocated(self, port: int) -> bool:
        return port in self._used

    def allocate(self, port: int) -> int:
        if not self.contains(port):
            raise AllocationError(
                "provided port is not in the valid range. The range of valid ports is "
                f"{self.range_text}"
            )
        if port in self._used:
            raise AllocationError("provided port is already allocated")
        self._used.add(port)
        return port

    def allocate_next(self) -> int:
        free = self.size - len(self._used)
        if free <= 0:
            raise AllocationError("failed to allocate a nodePort: range is full", range_full=True)
        for _ in range(_RANDOM_PROBES):
            candidate = self._rng.randint(self.first, self.last)
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate
        candidates = [p for p in range(self.first, self.last + 1) if p not in self._used]
        port = self._rng.choice(candidates)
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        self._used.discard(port)

    def mark_used(self, port: int) -> bool:
        if not self.contains(port):
            return False
        self._used.add(port)
        return True


@dataclass
class Reservations:
    """What one write has taken (undone on rollback) and will give back (done on commit)."""

    _undo: list[Callable[[], None]] = field(default_factory=list)
    _on_commit: list[Callable[[], None]] = field(default_factory=list)

    def take_ip(self, allocator: IPAllocator, ip: str | None) -> str:
        allocated = allocator.allocate(ip) if ip is not None else allocator.allocate_next()
        self._undo.append(lambda: allocator.release(allocated))
        return allocated

    def take_port(self, allocator: PortAllocator, port: int | None) -> int:
        allocated = allocator.allocate(port) if port is not None else allocator.allocate_next()
        self._undo.append(lambda: allocator.release(allocated))
        return allocated

    def give_back_ip(self, allocator: IPAllocator, ip: str) -> None:
        self._on_commit.append(lambda: allocator.release(ip))

    def give_back_port(self, allocator: PortAllocator, port: int) -> None:
        self._on_commit.append(lambda: allocator.release(port))

    def commit(self) -> None:
        for action in self._on_commit:
            action()
        self._undo.clear()
        self._on_commit.clear()

    def rollback(self) -> None:
        for action in reversed(self._undo):
            action()
        self._undo.clear()
        self._on_commit.clear()
