"""Bounded memoisation of pure string functions, for the checks the parsers repeat.

Every Service or EndpointSlice update re-parses the whole object, so the same namespaces,
names, label keys and addresses are checked again and again. A cache is bounded so that
a stream of ever-different garbage cannot grow memory without limit; when full it simply
starts over (cheaper and simpler than LRU bookkeeping on the hot path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

R = TypeVar("R")

_MISSING: Final = object()


class Memo(Generic[R]):
    """``function`` with its answers remembered, up to ``limit`` of them."""

    __slots__ = ("_function", "_limit", "known")

    def __init__(self, function: Callable[[str], R], limit: int) -> None:
        self._function = function
        self._limit = limit
        # The answers so far; callers on a hot path may read it directly (it is cleared in
        # place, never replaced).
        self.known: dict[str, R] = {}

    def __call__(self, text: str) -> R:
        cached = self.known.get(text, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]  # only R values are stored
        result = self._function(text)
        if len(self.known) >= self._limit:
            self.known.clear()
        self.known[text] = result
        return result

    def clear(self) -> None:
        self.known.clear()
