"""Exponential backoff with jitter, on an injected clock."""

from __future__ import annotations

import random

from kproxy.clock import Clock


class ExponentialBackoff:
    """Delays that double from ``initial`` up to ``maximum``, each stretched by up to
    ``jitter`` (a fraction) at random so that many nodes do not retry in lock step.

    After ``reset_after`` seconds without a failure the next delay starts from ``initial``
    again: a failure after a long healthy period is treated as a new incident.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        initial: float = 0.8,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        reset_after: float = 120.0,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._initial = initial
        self._maximum = maximum
        self._factor = factor
        self._jitter = jitter
        self._reset_after = reset_after
        self._rng = rng or random.Random()
        self._current = 0.0
        self._last_failure: float | None = None

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before trying again."""
        now = self._clock.monotonic()
        if self._last_failure is None or now - self._last_failure > self._reset_after:
            self._current = self._initial
        else:
            self._current = min(self._current * self._factor, self._maximum)
        self._last_failure = now
        return self._current * (1.0 + self._rng.random() * self._jitter)

    def reset(self) -> None:
        self._current = 0.0
        self._last_failure = None
