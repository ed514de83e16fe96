"""Garbage-collector settings for a process that holds a large, long-lived, acyclic state.

kproxy's state (frozen records, tuples, dicts) is freed by reference counting; the cyclic
collector only finds nothing in it, but with CPython's default thresholds it re-traverses the
whole growing heap again and again while 10,000 services are parsed — measured at 40% of
startup time (bench/bench_informer.py). Fewer young collections, and freezing what survived
the first sync out of the collector's view, remove that cost without disabling it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 50_000
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 100


def configure_gc() -> None:
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside: for one-shot work (``run --once``, ``kproxy rules``) that
    builds its state once, uses it and ends. The collector would only traverse that state
    (a third of the planner's time at 10,000 services, even with the thresholds above);
    its memory is freed by reference counting. The collector's former state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def freeze_long_lived() -> None:
    """Move everything alive now into the permanent generation (after the first sync)."""
    gc.collect()
    gc.freeze()
