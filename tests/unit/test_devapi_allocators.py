"""ClusterIP and NodePort allocators, and reservations that commit or roll back."""

from __future__ import annotations

import random

import pytest

from kproxy.devcluster.apiserver.allocators import (
    AllocationError,
    IPAllocator,
    PortAllocator,
    Reservations,
)


def test_ip_allocator_never_hands_out_network_or_broadcast() -> None:
    allocator = IPAllocator("10.0.0.0/29", random.Random(1))
    handed = {allocator.allocate_next() for _ in range(6)}
    assert handed == {f"10.0.0.{i}" for i in range(1, 7)}
    with pytest.raises(AllocationError) as caught:
        allocator.allocate_next()
    assert caught.value.range_full


def test_ip_allocator_rejects_taken_and_out_of_range() -> None:
    allocator = IPAllocator("10.96.0.0/16", random.Random(1))
    assert allocator.allocate("10.96.0.10") == "10.96.0.10"
    with pytest.raises(AllocationError, match="provided IP is already allocated"):
        allocator.allocate("10.96.0.10")
    with pytest.raises(AllocationError, match="not in the valid range"):
        allocator.allocate("10.97.0.1")
    with pytest.raises(AllocationError, match="not in the valid range"):
        allocator.allocate("fd00::1")
    allocator.release("10.96.0.10")
    assert allocator.allocate("10.96.0.10") == "10.96.0.10"


def test_ipv6_allocator_canonicalises() -> None:
    allocator = IPAllocator("fd00:10:96::/112", random.Random(1))
    assert allocator.family == "IPv6"
    assert allocator.allocate("fd00:10:96:0::a") == "fd00:10:96::a"
    assert allocator.contains(allocator.allocate_next())


def test_port_allocator_range_and_conflicts() -> None:
    ports = PortAllocator(30000, 30002, random.Random(1))
    with pytest.raises(AllocationError, match="30000-30002"):
        ports.allocate(29999)
    assert ports.allocate(30001) == 30001
    with pytest.raises(AllocationError, match="already allocated"):
        ports.allocate(30001)
    assert {ports.allocate_next(), ports.allocate_next()} == {30000, 30002}
    with pytest.raises(AllocationError) as caught:
        ports.allocate_next()
    assert caught.value.range_full


def test_reservations_roll_back_what_they_took_and_defer_releases() -> None:
    ips = IPAllocator("10.0.0.0/24", random.Random(1))
    ports = PortAllocator(30000, 30010, random.Random(1))
    held = ips.allocate("10.0.0.5")
    reservations = Reservations()
    reservations.take_ip(ips, "10.0.0.6")
    reservations.take_port(ports, 30005)
    reservations.give_back_ip(ips, held)
    assert ips.is_allocated(held)  # not released before commit
    reservations.rollback()
    assert ips.is_allocated(held)
    assert not ips.is_allocated("10.0.0.6")
    assert not ports.is_allocated(30005)

    committed = Reservations()
    committed.take_ip(ips, "10.0.0.6")
    committed.give_back_ip(ips, held)
    committed.commit()
    assert ips.is_allocated("10.0.0.6")
    assert not ips.is_allocated(held)
