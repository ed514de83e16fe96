"""Bounded-frequency sync runner.

Watch handlers only record changes and call :meth:`SyncRunner.request`; this runner decides
when the one sync function actually runs:

* never more often than ``min_interval`` (bursts of requests coalesce into one sync),
* at least every ``max_interval`` (the periodic full resync, ``--iptables-sync-period``),
* after a failed sync, again after a backoff that starts at ``min_interval`` (at least
  ``initial_retry``) and doubles up to ``max_interval``, until a sync succeeds.

Everything is driven by an injected :class:`~kproxy.clock.Clock`, so tests run on a fake
clock and never sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kproxy.clock import Clock

log = logging.getLogger(__name__)

SyncFunction = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RunnerTimes:
    """Timestamps (monotonic clock) that health checks and metrics read."""

    last_sync_start: float | None
    last_sync_success: float | None
    oldest_pending_request: float | None  # set while a request waits for a sync


class SyncRunner:
    def __init__(
        self,
        sync: SyncFunction,
        *,
        clock: Clock,
        min_interval: float,
        max_interval: float,
        initial_retry: float = 1.0,
    ) -> None:
        if max_interval <= 0:
            raise ValueError("max_interval must be positive")
        self._sync = sync
        self._clock = clock
        self._min_interval = max(0.0, min_interval)
        self._max_interval = max(max_interval, self._min_interval)
        self._initial_retry = max(initial_retry, self._min_interval)
        self._wakeup = asyncio.Event()
        self._pending_since: float | None = None
        self._last_start: float | None = None
        self._last_success: float | None = None
        self._retry_at: float | None = None
        self._retry_delay = 0.0
        self._stopped = False
        self.syncs_run = 0
        self.syncs_failed = 0

    # -- what handlers call ----------------------------------------------------------------

    def request(self) -> None:
        """Ask for a sync as soon as the minimum interval allows; cheap and idempotent."""
        if self._pending_since is None:
            self._pending_since = self._clock.monotonic()
        self._wakeup.set()

    def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()

    @property
    def times(self) -> RunnerTimes:
        return RunnerTimes(self._last_start, self._last_success, self._pending_since)

    # -- the loop ----------------------------------------------------------------------------

    def _next_due(self) -> float:
        """The monotonic time at which the next sync should start."""
        now = self._clock.monotonic()
        if self._last_start is None:
            return now if self._pending_since is not None else float("inf")
        earliest = self._last_start + self._min_interval
        due = self._last_start + self._max_interval
        if self._pending_since is not None:
            due = min(due, earliest)
        if self._retry_at is not None:
            due = min(due, max(self._retry_at, earliest))
        return due

    async def _wait_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` or until a request may make an earlier sync due."""
        delay = deadline - self._clock.monotonic()
        if delay <= 0:
            return
        self._wakeup.clear()
        if self._pending_since is not None:
            # A request is already queued and only the minimum interval holds it back:
            # further requests cannot make it earlier, so just sleep.
            await self._clock.sleep(delay)
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(min(delay, 1e9)))
        waker = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                if not task.done():
                    task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def run_forever(self) -> None:
        """Run syncs until :meth:`stop` is called; the first sync waits for a request."""
        while not self._stopped:
            due = self._next_due()
            if due > self._clock.monotonic():
                await self._wait_until(due)
                continue
            await self._run_once()

    async def _run_once(self) -> None:
        now = self._clock.monotonic()
        self._last_start = now
        self._pending_since = None
        self.syncs_run += 1
        try:
            ok = await self._sync()
        except Exception:
            log.exception("sync failed with an unexpected error")
            ok = False
        if ok:
            self._last_success = self._clock.monotonic()
            self._retry_at = None
            self._retry_delay = 0.0
            return
        self.syncs_failed += 1
        self._retry_delay = (
            self._initial_retry
            if self._retry_delay == 0
            else min(self._retry_delay * 2, self._max_interval)
        )
        self._retry_at = self._clock.monotonic() + self._retry_delay
        log.warning("sync failed; retrying in %.1fs", self._retry_delay)
