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
def one_shot_collector() -> Iterator[None]:
    """The collector around one-shot work (``run --once``, ``kproxy rules``), which builds
    its state once, uses it and exits: off inside, as it would only traverse that state (a
    third of the planner's time at 10,000 services, even with the thresholds above); at the
    end, what is left is frozen rather than traversed (as freeze_long_lived does after a
    long-running proxy's first sync, without its collection), so the state's reference
    cycles (700,000 objects at 10,000 services, 0.4 s to collect) go with the process. The
    collector's former state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def freeze_long_lived() -> None:
    """Move everything alive now into the permanent generation (after the first sync)."""
    gc.collect()
    gc.freeze()
