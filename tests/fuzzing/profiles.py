"""Hypothesis settings of the fuzz tests: a bounded, reproducible run for ``make test`` and an
open-ended one for ``make fuzz``.

``fuzz-ci`` (the default): a fixed number of examples per test, derandomized (every run tests
the same examples) and without an example database, so CI results do not depend on earlier
runs. ``fuzz`` (``KPROXY_FUZZ_SECONDS`` set, as ``make fuzz FUZZ_SECONDS=N`` does): fresh
random examples in batches of 50 (a test overruns its time by one batch at most), failures
kept in ``.hypothesis/`` and replayed first; the fuzzing conftest repeats each test's
batches until its share of the time is used up.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_SECONDS_VARIABLE = "KPROXY_FUZZ_SECONDS"
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                 HealthCheck.large_base_example]

settings.register_profile("fuzz-ci", max_examples=100, derandomize=True, database=None,
                          deadline=None, suppress_health_check=_SLOW_IS_FINE,
                          print_blob=True)
settings.register_profile("fuzz", max_examples=50, derandomize=False, deadline=None,
                          suppress_health_check=_SLOW_IS_FINE, print_blob=True)


def fuzz_seconds() -> float | None:
    """The time ``make fuzz`` gives the whole run, or None for the bounded run."""
    raw = os.environ.get(FUZZ_SECONDS_VARIABLE, "").strip()
    return float(raw) if raw else None


def profile(ci_examples: int) -> settings:
    """This run's settings; ``ci_examples`` bounds the test's share of ``make test``."""
    if fuzz_seconds() is not None:
        return settings.get_profile("fuzz")
    return settings(settings.get_profile("fuzz-ci"), max_examples=ci_examples)
