"""--proxy-port-range: listeners take ports of the range round-robin, skipping busy ones."""

from __future__ import annotations

import errno

import pytest

from kproxy.userspace.ports import PortRange


class Binder:
    """Binds like the kernel would: ``busy`` ports fail with EADDRINUSE."""

    def __init__(self, *busy: int) -> None:
        self.busy = set(busy)
        self.tried: list[int] = []

    async def __call__(self, port: int) -> int:
        self.tried.append(port)
        if port in self.busy:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self.busy.add(port)
        return port


async def test_ports_are_taken_round_robin_and_busy_ones_skipped() -> None:
    ports = PortRange(30000, 30003)
    binder = Binder(30001)
    assert [await ports.bind(binder) for _ in range(3)] == [30000, 30002, 30003]
    binder.busy.discard(30000)  # released: taken again only after the cursor wrapped
    assert await ports.bind(binder) == 30000
    with pytest.raises(OSError, match="no free port in --proxy-port-range 30000-30003"):
        await ports.bind(binder)


async def test_other_errors_are_not_retried() -> None:
    async def denied(port: int) -> int:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError, match="Permission denied"):
        await PortRange(1000, 1010).bind(denied)


def test_bad_range_is_refused() -> None:
    with pytest.raises(ValueError, match="not a port range: 20-10"):
        PortRange(20, 10)
