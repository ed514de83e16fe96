"""Where rejected input goes: one log line per distinct problem, and a count per kind and
reason.

The same broken object is seen again on every resync and relist; it is logged once (until it
changes), so a bad object cannot flood the log, but it is always counted. The line is
escaped (``Rejection.__str__``): a name with a newline or an ANSI escape cannot forge lines.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from kproxy.model.types import Rejection

log = logging.getLogger("kproxy.rejected")

# Bounded so that a stream of ever-different bad objects cannot grow memory without limit.
MAX_REMEMBERED = 10_000


class RejectionLog:
    def __init__(self) -> None:
        # (kind, reason code) -> count; both come from fixed sets, so the metric's label
        # values stay bounded whatever the input.
        self.counts: Counter[tuple[str, str]] = Counter()
        self._logged: set[Rejection] = set()

    def record(self, rejections: Iterable[Rejection]) -> None:
        for rejection in rejections:
            self.counts[rejection.kind, rejection.code.value] += 1
            if rejection in self._logged:
                continue
            if len(self._logged) >= MAX_REMEMBERED:
                self._logged.clear()
            self._logged.add(rejection)
            log.warning("%s", rejection)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
