"""Garbage-collector settings for a process that holds a large, long-lived, acyclic state.

kproxy's state (frozen records, tuples, dicts) is freed by reference counting; the cyclic
collector only finds nothing in it, but with CPython's default thresholds it re-traverses the
whole growing heap again and again while 10,000 services are parsed — measured at 40% of
startup time (bench/bench_informer.py). Fewer young collections, and freezing what survived
the first sync out of the collector's view, remove that cost without disabling it.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 100


def configure_gc() -> None:
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def freeze_long_lived() -> None:
    """Move everything alive now into the permanent generation (after the first sync)."""
    gc.collect()
    gc.freeze()
