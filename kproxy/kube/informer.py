"""List + watch of one resource, as client-go's reflector does, feeding a handler.

* List (paged) with resourceVersion "" (a consistent, current read), then watch from the
  list's resourceVersion with bookmarks, tracking the newest version from events and bookmarks.
* A watch that the server ends cleanly (its timeoutSeconds) is simply resumed from the last
  version. 410 Gone, a dropped connection or any other error lead to a relist after an
  exponential backoff with jitter; the relist is compared with what was known and only the
  *difference* is emitted, so objects deleted during an outage are deleted here too.
* ``on_listed`` is called after every complete (re)list has been applied; ``listed`` is set
  after the first.

The handler gets raw JSON dicts: parsing and validation belong to the model layer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from kproxy.backoff import ExponentialBackoff
from kproxy.clock import Clock, SystemClock
from kproxy.kube.transport import ApiError, KubeTransport, ResourceExpired, error_from_status

log = logging.getLogger(__name__)

# After a 410 Gone the relist is immediate, unless the previous 410 was this recent.
EXPIRY_QUIET_PERIOD = 60.0

ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


class InformerHandler(Protocol):
    def on_upsert(self, obj: dict[str, Any]) -> None: ...

    def on_delete(self, namespace: str, name: str) -> None: ...

    def on_listed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    kind: str  # for logs: "Service", "EndpointSlice", "Node"
    path: str  # collection path, e.g. "/api/v1/services"
    label_selector: str = ""
    field_selector: str = ""

    def selector_params(self) -> list[tuple[str, str]]:
        params = []
        if self.label_selector:
            params.append(("labelSelector", self.label_selector))
        if self.field_selector:
            params.append(("fieldSelector", self.field_selector))
        return params


@dataclass
class InformerStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    expired: int = 0
    errors: int = 0
    handler_errors: int = 0


def object_key(obj: dict[str, Any]) -> tuple[ObjectKey, str] | None:
    """(namespace, name) and resourceVersion of an object, or None if it has no name."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    namespace = metadata.get("namespace")
    version = metadata.get("resourceVersion")
    return (
        (namespace if isinstance(namespace, str) else "", name),
        version if isinstance(version, str) else "",
    )


class Informer:
    def __init__(
        self,
        transport: KubeTransport,
        spec: ResourceSpec,
        handler: InformerHandler,
        *,
        clock: Clock | None = None,
        backoff: ExponentialBackoff | None = None,
        page_size: int = 500,
        watch_timeout_range: tuple[int, int] = (300, 600),
        request_timeout: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self._spec = spec
        self._handler = handler
        self._clock = clock or SystemClock()
        self._backoff = backoff or ExponentialBackoff(self._clock)
        self._page_size = page_size
        self._watch_timeout_range = watch_timeout_range
        self._request_timeout = request_timeout
        self._rng = rng or random.Random()
        self._known: dict[ObjectKey, str] = {}
        self._last_expiry: float | None = None
        self.resource_version = ""
        self.listed = asyncio.Event()
        self.stats = InformerStats()

    @property
    def known_count(self) -> int:
        return len(self._known)

    async def run(self) -> None:
        """List and watch until cancelled; never returns otherwise."""
        while True:
            try:
                await self._list_and_apply()
                while True:
                    await self._watch_once()
            except ResourceExpired as error:
                self.stats.expired += 1
                log.info("%s watch expired (%s); relisting", self._spec.kind, error.message)
                if self._relist_at_once_after_expiry():
                    continue
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                self.stats.errors += 1
                log.warning("%s list/watch failed: %s", self._spec.kind, error or repr(error))
            delay = self._backoff.next_delay()
            log.debug("%s: relisting in %.2fs", self._spec.kind, delay)
            await self._clock.sleep(delay)

    def _relist_at_once_after_expiry(self) -> bool:
        """410 Gone is routine (history compacted): relist at once, as client-go does, unless
        410s keep coming, which then go through the backoff like any other failure."""
        now = self._clock.monotonic()
        at_once = self._last_expiry is None or now - self._last_expiry > EXPIRY_QUIET_PERIOD
        self._last_expiry = now
        return at_once

    # -- list ---------------------------------------------------------------------------------

    async def _list_pages(self) -> AsyncIterator[tuple[list[Any], str]]:
        """Yield each page of a paged list with the list's resourceVersion (final on the
        last page). Pages are applied as they come, so at most one page of raw JSON is held
        at a time: at 10,000 objects that halves peak memory."""
        continue_token = ""
        while True:
            params = [*self._spec.selector_params(), ("resourceVersion", "")]
            if self._page_size:
                params.append(("limit", str(self._page_size)))
            if continue_token:
                params.append(("continue", continue_token))
            page = await self._transport.get_json(
                self._spec.path, params, request_timeout=self._request_timeout
            )
            items = page.get("items")
            metadata = page.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else {}
            version = metadata.get("resourceVersion")
            yield (items if isinstance(items, list) else []), (
                version if isinstance(version, str) else ""
            )
            token = metadata.get("continue")
            if not (isinstance(token, str) and token):
                return
            continue_token = token

    async def _list_and_apply(self) -> None:
        seen: dict[ObjectKey, str] = {}
        version = ""
        async for items, page_version in self._list_pages():
            version = page_version
            for item in items:
                keyed = object_key(item) if isinstance(item, dict) else None
                if keyed is None:
                    continue
                key, item_version = keyed
                seen[key] = item_version
                if self._known.get(key) != item_version or not item_version:
                    self._emit_upsert(item)
        self.stats.lists += 1
        for key in [key for key in self._known if key not in seen]:
            self._emit_delete(key)
        self._known = seen
        self.resource_version = version
        log.debug("%s: listed %d objects at version %s", self._spec.kind, len(seen), version)
        try:
            self._handler.on_listed()
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s handler failed on listed", self._spec.kind)
        self.listed.set()

    # -- watch --------------------------------------------------------------------------------

    async def _watch_once(self) -> None:
        """One watch request; returns when the server ends it cleanly, raises on errors."""
        low, high = self._watch_timeout_range
        timeout_seconds = self._rng.randint(low, high)
        params = [
            *self._spec.selector_params(),
            ("watch", "true"),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        self.stats.watches += 1
        # A silent dead connection must not hang forever: bookmarks arrive about every
        # minute, and the server ends the watch after timeoutSeconds anyway.
        read_timeout = float(timeout_seconds) + 30.0
        async for line in self._transport.watch_lines(self._spec.path, params, read_timeout):
            self._apply_event(json.loads(line))

    def _apply_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise ValueError(f"{self._spec.kind} watch: event is not an object")
        event_type = event.get("type")
        obj = event.get("object")
        if event_type == "ERROR":
            raise error_from_status(obj, 500)
        if not isinstance(obj, dict):
            raise ValueError(f"{self._spec.kind} watch: {event_type} event without an object")
        keyed = object_key(obj)
        if event_type == "BOOKMARK":
            self.stats.bookmarks += 1
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if isinstance(version, str) and version:
                self.resource_version = version
            return
        if keyed is None:
            log.warning("%s watch: %s event for an object without a name", self._spec.kind,
                        event_type)
            return
        key, version = keyed
        self.stats.events += 1
        if event_type in ("ADDED", "MODIFIED"):
            self._known[key] = version
            self._emit_upsert(obj)
        elif event_type == "DELETED":
            if self._known.pop(key, None) is not None:
                self._emit_delete(key)
        else:
            log.warning("%s watch: unknown event type %r", self._spec.kind, event_type)
            return
        if version:
            self.resource_version = version
        # Events flowing means the connection is healthy: forget earlier failures.
        self._backoff.reset()

    # -- handler calls, isolated so one bad handler call cannot stop the informer ------------

    def _emit_upsert(self, obj: dict[str, Any]) -> None:
        try:
            self._handler.on_upsert(obj)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s handler failed on upsert", self._spec.kind)

    def _emit_delete(self, key: ObjectKey) -> None:
        try:
            self._handler.on_delete(*key)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s handler failed on delete", self._spec.kind)
