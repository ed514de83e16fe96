"""Watchers: what one watch sees of each change, and its bounded queue of encoded events.

Fan-out is synchronous at commit time: each change is offered to every watcher of its kind,
which filters it and appends the shared, already-encoded line to its own queue. A watcher
whose queue is full has fallen too far behind; it is closed, as a real server closes a slow
watcher, and its client resumes from the last resourceVersion it saw.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kproxy.devcluster.apiserver.history import Change, EventType, event_line
from kproxy.devcluster.apiserver.objects import StoredObject
from kproxy.devcluster.apiserver.resources import ResourceType
from kproxy.devcluster.apiserver.selectors import FieldSelector, LabelSelector

# Encodes one event for a watcher that wants something other than the plain object
# (kubectl's table watches).
EventEncoder = Callable[[EventType, StoredObject], bytes]


class CloseReason(enum.Enum):
    FELL_BEHIND = "fell behind"  # end the stream cleanly, the client re-watches
    SHUTDOWN = "server shutting down"  # end the stream cleanly
    DROPPED = "connection dropped"  # cut the connection, as a network failure would


@dataclass(frozen=True, slots=True)
class WatchFilter:
    resource: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector

    def matches(self, obj: StoredObject) -> bool:
        if self.namespace is not None and obj.namespace != self.namespace:
            return False
        if not self.labels.empty and not self.labels.matches(obj.labels):
            return False
        return self.fields.empty or self.fields.matches(self.resource.field_values(obj.body))


def visible_event(watch_filter: WatchFilter, change: Change) -> EventType | None:
    """The event a filtered watch sees for a change: an update that makes an object start
    matching is an ADDED, one that makes it stop matching is a DELETED."""
    if watch_filter.namespace is not None and change.key[0] != watch_filter.namespace:
        return None
    matched_before = change.previous is not None and watch_filter.matches(change.previous)
    if change.type is EventType.DELETED:
        return EventType.DELETED if matched_before else None
    matches_now = watch_filter.matches(change.current)
    if matches_now:
        return EventType.MODIFIED if matched_before else EventType.ADDED
    return EventType.DELETED if matched_before else None


class Watcher:
    def __init__(
        self, watch_filter: WatchFilter, capacity: int, encoder: EventEncoder | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError("watch queue capacity must be at least 1")
        self.filter = watch_filter
        self.capacity = capacity
        self._encoder = encoder
        self._pending: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self.closed: CloseReason | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def encode(self, event_type: EventType, obj: StoredObject) -> bytes:
        if self._encoder is not None:
            return self._encoder(event_type, obj)
        return event_line(event_type, obj.raw)

    def offer(self, change: Change) -> None:
        if self.closed is not None:
            return
        event_type = visible_event(self.filter, change)
        if event_type is None:
            return
        if self._encoder is None:
            line = change.line(event_type)
        else:
            obj = change.as_deletion() if event_type is EventType.DELETED else change.current
            line = self._encoder(event_type, obj)
        self.push(line)

    def push(self, line: bytes) -> None:
        if self.closed is not None:
            return
        if len(self._pending) >= self.capacity:
            self.close(CloseReason.FELL_BEHIND)
            return
        self._pending.append(line)
        self._wakeup.set()

    def close(self, reason: CloseReason) -> None:
        if self.closed is None:
            self.closed = reason
        self._wakeup.set()

    def drain(self) -> list[bytes]:
        """Take everything queued without waiting."""
        batch = list(self._pending)
        self._pending.clear()
        return batch

    async def next_batch(self, wait_seconds: float | None) -> list[bytes]:
        """Everything queued, waiting up to ``wait_seconds`` for something to arrive;
        empty if nothing did, and once closed."""
        if not self._pending and self.closed is None:
            self._wakeup.clear()
            try:
                async with asyncio.timeout(wait_seconds):
                    await self._wakeup.wait()
            except TimeoutError:
                return []
        if self.closed is not None and self.closed is not CloseReason.SHUTDOWN:
            # A watcher that fell behind or was dropped delivers nothing more.
            self._pending.clear()
            return []
        batch = list(self._pending)
        self._pending.clear()
        return batch
