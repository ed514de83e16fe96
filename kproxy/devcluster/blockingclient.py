"""The dev API client for code without an event loop (tests, the demo's narration): every call
blocks until the server answered.

One event loop runs in a daemon thread with one HTTP session, so a test issuing hundreds of
calls between probes pays for neither a new loop nor a new connection each time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from kproxy.devcluster.client import ApiObject, DevApiClient, DevApiError

T = TypeVar("T")
CALL_LIMIT = 30.0  # bounds a hung server; never a performance expectation


class BlockingApiClient:
    """:class:`DevApiClient`'s calls, blocking; over the server's Unix socket or a URL."""

    def __init__(self, *, unix_path: str | None = None, url: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="dev-api-client")
        self._thread.start()

        async def connect() -> DevApiClient:
            return DevApiClient(unix_path=unix_path, url=url)

        self._client = self._wait(connect())

    def __enter__(self) -> BlockingApiClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _wait(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(CALL_LIMIT)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> ApiObject:
        # A kept-alive connection to a server that restarted since fails on first use; the
        # request never reached the new server, so it is sent once more on a fresh one.
        try:
            return self._send(method, args, kwargs)
        except aiohttp.ServerDisconnectedError:
            return self._send(method, args, kwargs)

    def _send(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ApiObject:
        result: ApiObject = self._wait(getattr(self._client, method)(*args, **kwargs))
        return result

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._wait(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CALL_LIMIT)
        self._loop.close()

    def create(self, obj: ApiObject) -> ApiObject:
        return self._call("create", obj)

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = "default") -> ApiObject:
        return self._call("get", api_version, kind, name, namespace)

    def replace(self, obj: ApiObject) -> ApiObject:
        return self._call("replace", obj)

    def apply(self, obj: ApiObject) -> ApiObject:
        """Create the object, or replace it if it exists."""
        return self._call("apply", obj)

    def merge_patch(self, api_version: str, kind: str, name: str, patch: ApiObject,
                    namespace: str | None = "default", *, status: bool = False) -> ApiObject:
        return self._call("merge_patch", api_version, kind, name, patch, namespace,
                          status=status)

    def delete(self, api_version: str, kind: str, name: str,
               namespace: str | None = "default") -> ApiObject:
        return self._call("delete", api_version, kind, name, namespace)

    def refusals(self) -> ApiObject:
        return self._call("refusals")

    def delete_if_present(self, api_version: str, kind: str, name: str,
                          namespace: str | None = "default") -> bool:
        """Delete the object; False when there was none (a cleanup that may find nothing)."""
        try:
            self.delete(api_version, kind, name, namespace)
        except DevApiError as error:
            if error.status != 404:
                raise
            return False
        return True
