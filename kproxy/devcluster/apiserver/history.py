"""Changes, and the bounded history of recent ones that watches resume from.

A watch from resourceVersion N needs every change after N. The history keeps the newest
``capacity`` changes across all kinds; once a change is dropped, any N before it is too old
and the client gets 410 Gone, as with a real server after etcd compaction.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from kproxy.devcluster.apiserver.objects import ObjectKey, StoredObject


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"
    ERROR = "ERROR"


def event_line(event_type: str, raw_object: bytes) -> bytes:
    """One watch event as the newline-terminated JSON the API streams."""
    return b'{"type":"' + event_type.encode() + b'","object":' + raw_object + b"}\n"


@dataclass(slots=True)
class Change:
    """One committed write. For a deletion ``current`` is the last state stamped with the
    deletion's resourceVersion, and ``previous`` the state before it."""

    resource_version: int
    plural: str
    type: EventType
    key: ObjectKey
    current: StoredObject
    previous: StoredObject | None
    _lines: dict[str, bytes] = field(default_factory=dict)
    _previous_restamped: StoredObject | None = None

    def as_deletion(self) -> StoredObject:
        """What a watcher that stops matching sees: the old content, this change's version."""
        if self.type is EventType.DELETED or self.previous is None:
            return self.current
        if self._previous_restamped is None:
            self._previous_restamped = self.previous.restamped(self.resource_version)
        return self._previous_restamped

    def forget_encodings(self) -> None:
        self._lines.clear()

    def line(self, event_type: EventType) -> bytes:
        """The encoded event for one of the types a watcher can see, built once per change."""
        cached = self._lines.get(event_type)
        if cached is None:
            obj = self.as_deletion() if event_type is EventType.DELETED else self.current
            cached = event_line(event_type, obj.raw)
            self._lines[event_type] = cached
        return cached


class ChangeHistory:
    def __init__(self, capacity: int, current_resource_version: int = 0) -> None:
        if capacity < 1:
            raise ValueError("history capacity must be at least 1")
        self._changes: deque[Change] = deque(maxlen=capacity)
        # Every change with a resourceVersion above this one is still held.
        self._complete_after = current_resource_version

    @property
    def capacity(self) -> int:
        return self._changes.maxlen or 0

    @property
    def oldest_available(self) -> int:
        """The oldest resourceVersion a watch can still start from."""
        return self._complete_after

    def __len__(self) -> int:
        return len(self._changes)

    def append(self, change: Change) -> None:
        if len(self._changes) == self._changes.maxlen:
            self._complete_after = self._changes[0].resource_version
        self._changes.append(change)

    def since(self, resource_version: int) -> list[Change] | None:
        """Changes after ``resource_version`` in order, or None if some were already dropped."""
        if resource_version < self._complete_after:
            return None
        newer: list[Change] = []
        for change in reversed(self._changes):
            if change.resource_version <= resource_version:
                break
            newer.append(change)
        newer.reverse()
        return newer

    def clear(self, current_resource_version: int) -> None:
        self._changes.clear()
        self._complete_after = current_resource_version

    def resize(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("history capacity must be at least 1")
        kept = list(self._changes)[-capacity:]
        if len(kept) < len(self._changes):
            self._complete_after = self._changes[
                len(self._changes) - len(kept) - 1
            ].resource_version
        self._changes = deque(kept, maxlen=capacity)
