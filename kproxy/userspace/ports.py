"""Which node ports listeners bind to: any free one, or one of ``--proxy-port-range``.

With a range, ports are handed out round-robin from where the last one was taken (as
kube-proxy's userspace port allocator did), so that a port just released is not the next one
taken while its old connections may still be in TIME_WAIT or a client still sends to it.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import TypeVar

BoundT = TypeVar("BoundT")


class PortRange:
    """The inclusive range ``first``-``last``, walked from a cursor that survives calls."""

    def __init__(self, first: int, last: int) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"not a port range: {first}-{last}")
        self.first = first
        self.last = last
        self._next = first

    def candidates(self) -> list[int]:
        """Every port of the range once, starting at the cursor."""
        size = self.last - self.first + 1
        start = self._next - self.first
        return [self.first + (start + offset) % size for offset in range(size)]

    def taken(self, port: int) -> None:
        self._next = port + 1 if port < self.last else self.first

    async def bind(self, open_on: Callable[[int], Awaitable[BoundT]]) -> BoundT:
        """``open_on(port)`` for the first port of the range that is free (EADDRINUSE: the
        next one); OSError(EADDRINUSE) when none is."""
        for port in self.candidates():
            try:
                bound = await open_on(port)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                raise
            self.taken(port)
            return bound
        raise OSError(errno.EADDRINUSE,
                      f"no free port in --proxy-port-range {self.first}-{self.last}")
