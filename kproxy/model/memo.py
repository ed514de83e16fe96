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

    __slots__ = ("_cache", "_function", "_limit")

    def __init__(self, function: Callable[[str], R], limit: int) -> None:
        self._function = function
        self._limit = limit
        self._cache: dict[str, R] = {}

    def __call__(self, text: str) -> R:
        cached = self._cache.get(text, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]  # only R values are stored
        result = self._function(text)
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[text] = result
        return result

    def clear(self) -> None:
        self._cache.clear()
