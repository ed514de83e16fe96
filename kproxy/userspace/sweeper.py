"""A periodic task on the injected clock that runs only while there is something to sweep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from kproxy.clock import Clock


class Sweeper:
    """Calls ``sweep(now)`` every ``interval`` seconds while it returns True (more to watch).

    Per-connection timers would cost a timer handle per connection and a reschedule per
    event; instead connections set an ``active`` flag and one sweep per interval reads it.
    """

    def __init__(self, clock: Clock, interval: float, sweep: Callable[[float], bool]) -> None:
        self._clock = clock
        self._interval = interval
        self._sweep = sweep
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            if not self._sweep(self._clock.monotonic()):
                return

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
