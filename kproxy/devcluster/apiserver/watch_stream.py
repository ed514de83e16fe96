"""One watch response: initial events, then changes as they come, bookmarks and the timeout.

The response is a chunked stream of newline-terminated JSON events, as a real server sends.
Bookmarks are only sent when the watcher's queue is empty, so the resourceVersion a bookmark
carries never runs ahead of an event still waiting to be written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.history import EventType, event_line
from kproxy.devcluster.apiserver.objects import encode
from kproxy.devcluster.apiserver.resources import ResourceType
from kproxy.devcluster.apiserver.store import WatchStart
from kproxy.devcluster.apiserver.watchers import CloseReason

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# Initial events are written in slices so a large snapshot does not sit in one buffer.
_LINES_PER_WRITE = 1000


@dataclass(frozen=True, slots=True)
class WatchOptions:
    timeout_seconds: float | None
    bookmarks: bool
    bookmark_interval: float
    initial_events_end: bool  # send the bookmark that ends sendInitialEvents


def bookmark_line(resource: ResourceType, resource_version: int, *, initial_end: bool) -> bytes:
    metadata: dict[str, object] = {
        "resourceVersion": str(resource_version),
        "creationTimestamp": None,
    }
    if initial_end:
        metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
    body = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata}
    return event_line(EventType.BOOKMARK, encode(body))


def error_line(error: ApiError) -> bytes:
    return event_line(EventType.ERROR, json.dumps(error.status(), separators=(",", ":")).encode())


async def start_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def stream_error(request: web.Request, error: ApiError) -> web.StreamResponse:
    """A watch that cannot start from the requested version: one ERROR event, then the end."""
    response = await start_stream(request)
    await response.write(error_line(error))
    await response.write_eof()
    return response


async def stream_watch(
    request: web.Request,
    start: WatchStart,
    options: WatchOptions,
    current_version: Callable[[], int],
) -> web.StreamResponse:
    """Write the watch until it times out, the watcher is closed or the client goes away.
    The caller unregisters the watcher afterwards."""
    watcher = start.watcher
    resource = watcher.filter.resource
    response = await start_stream(request)
    loop = asyncio.get_running_loop()
    deadline = None if options.timeout_seconds is None else loop.time() + options.timeout_seconds

    lines = start.initial_lines
    for offset in range(0, len(lines), _LINES_PER_WRITE):
        await response.write(b"".join(lines[offset : offset + _LINES_PER_WRITE]))
    if options.initial_events_end:
        await response.write(bookmark_line(resource, start.resource_version, initial_end=True))

    next_bookmark = loop.time() + options.bookmark_interval if options.bookmarks else None
    while True:
        now = loop.time()
        if deadline is not None and now >= deadline:
            break
        wakeups = [t for t in (deadline, next_bookmark) if t is not None]
        wait = max(0.0, min(wakeups) - now) if wakeups else None
        batch = await watcher.next_batch(wait)
        if watcher.closed is CloseReason.DROPPED:
            transport = request.transport
            if transport is not None:
                transport.abort()
            return response
        if batch:
            await response.write(b"".join(batch))
        if watcher.closed is not None:
            break
        if next_bookmark is not None and loop.time() >= next_bookmark and watcher.pending == 0:
            await response.write(bookmark_line(resource, current_version(), initial_end=False))
            next_bookmark = loop.time() + options.bookmark_interval
    await response.write_eof()
    return response
