"""``make fuzz``: each fuzz test runs batch after batch of fresh examples until its share of
``KPROXY_FUZZ_SECONDS`` is used up (a failure stops it at once). Without that variable the
tests run once, bounded by their ``fuzz-ci`` settings."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from profiles import fuzz_seconds

_SHARE = pytest.StashKey[float]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = fuzz_seconds()
    fuzzed = [item for item in items if item.get_closest_marker("fuzz") is not None]
    if seconds is not None and fuzzed:
        config.stash[_SHARE] = seconds / len(fuzzed)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    share = pyfuncitem.config.stash.get(_SHARE, None)
    if share is None or pyfuncitem.get_closest_marker("fuzz") is None:
        return None
    arguments = {name: pyfuncitem.funcargs[name]
                 for name in pyfuncitem._fixtureinfo.argnames}
    deadline = time.monotonic() + share
    batches = 0
    while True:
        # Each call of a @given test is a new hypothesis run: a fresh seed, new examples.
        pyfuncitem.obj(**arguments)
        batches += 1
        if time.monotonic() >= deadline:
            break
    sys.stderr.write(f"\n{pyfuncitem.nodeid}: {batches} batches in "
                     f"{share:.0f} s without a failure\n")
    return True
