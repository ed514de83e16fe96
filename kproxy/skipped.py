"""Service ports a mode does not program, and why: logged once, counted, listed (mode-neutral).

A mode skips a port it cannot serve (a protocol it has no relay for) or cannot render (a
string its kernel payload cannot hold, :mod:`kproxy.renderable`). Each sync hands the
current set to :meth:`SkippedPorts.update`, which logs a port once when it starts being
skipped or its reason changes (not on every sync), once when it is programmed again, and
counts each new skip by kind for the ``kproxy_sync_proxy_rules_skipped_service_ports``
metric. ``kproxy rules`` prints the same set as comments.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from kproxy.model.types import ServicePortName

log = logging.getLogger("kproxy.skipped")


class SkipKind(enum.StrEnum):
    UNRENDERABLE = "unrenderable"  # a string the kernel payload cannot hold
    UNSUPPORTED = "unsupported"  # something this mode cannot serve


@dataclass(frozen=True, slots=True)
class SkipReason:
    kind: SkipKind
    text: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.text}"


def skipped_comment(name: ServicePortName, reason: SkipReason) -> str:
    """One ``# skipped ...`` line (restore input ignores lines starting with '#')."""
    return f"# skipped {_printable(str(name))}: {_printable(str(reason))}\n"


class SkippedPorts:
    def __init__(self) -> None:
        self.current: dict[ServicePortName, SkipReason] = {}
        self.counts: Counter[SkipKind] = Counter()

    def update(self, skipped: Mapping[ServicePortName, SkipReason]) -> None:
        """The ports skipped now (all of them, every sync)."""
        if skipped == self.current:
            return
        for name, reason in skipped.items():
            if self.current.get(name) != reason:
                self.counts[reason.kind] += 1
                level = logging.ERROR if reason.kind is SkipKind.UNRENDERABLE else logging.WARNING
                log.log(level, "service port %r not programmed: %s", str(name), reason)
        for name in self.current.keys() - skipped.keys():
            log.info("service port %r no longer skipped", str(name))
        self.current = dict(skipped)


def _printable(text: str) -> str:
    """``text`` with every character outside printable ASCII escaped, so a comment line
    stays one line whatever a name holds."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if " " <= ch <= "~" else ascii(ch)[1:-1] for ch in text)
