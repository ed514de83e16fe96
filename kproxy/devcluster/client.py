"""A small async client for the dev API server, used by tests and the demo to drive objects
the way controllers and kubectl would (create, replace, merge-patch, delete).

It connects over the server's Unix socket (``--listen-unix``) or a URL: a test driver in the
host's namespace reaches a server running inside a lab namespace through the file system,
with no network path between the two.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp

from kproxy.devcluster.apiserver.access import REFUSALS_PATH

ApiObject = dict[str, Any]

# (apiVersion, kind) -> (collection path prefix, namespaced, plural)
_KINDS: dict[tuple[str, str], tuple[str, bool, str]] = {
    ("v1", "Service"): ("/api/v1", True, "services"),
    ("v1", "Node"): ("/api/v1", False, "nodes"),
    ("v1", "Namespace"): ("/api/v1", False, "namespaces"),
    ("discovery.k8s.io/v1", "EndpointSlice"): ("/apis/discovery.k8s.io/v1", True, "endpointslices"),
}


class DevApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None) -> str:
    try:
        prefix, namespaced, plural = _KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unsupported kind {api_version}/{kind}") from None
    path = prefix
    if namespaced:
        path += f"/namespaces/{namespace or 'default'}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    return path


def _identity(obj: ApiObject) -> tuple[str, str, str | None, str]:
    metadata = obj.get("metadata") or {}
    return obj["apiVersion"], obj["kind"], metadata.get("namespace"), metadata["name"]


class DevApiClient:
    def __init__(self, *, unix_path: str | None = None, url: str | None = None) -> None:
        if (unix_path is None) == (url is None):
            raise ValueError("give exactly one of unix_path and url")
        connector = aiohttp.UnixConnector(path=unix_path) if unix_path else None
        self._base = url.rstrip("/") if url else "http://devapi"
        self._session = aiohttp.ClientSession(connector=connector)

    async def __aenter__(self) -> DevApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> ApiObject:
        async with self._session.request(
            method, self._base + path, json=body, headers={"Content-Type": content_type}
        ) as response:
            text = await response.text()
            if response.status >= 300:
                raise DevApiError(response.status, text)
            result: ApiObject = await response.json(content_type=None)
            return result

    async def create(self, obj: ApiObject) -> ApiObject:
        api_version, kind, namespace, _ = _identity(obj)
        return await self._call("POST", object_path(api_version, kind, namespace, None), obj)

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = "default"
    ) -> ApiObject:
        return await self._call("GET", object_path(api_version, kind, namespace, name))

    async def replace(self, obj: ApiObject) -> ApiObject:
        """PUT the object over the current one (optimistic concurrency on its version)."""
        api_version, kind, namespace, name = _identity(obj)
        current = await self.get(api_version, kind, name, namespace)
        body = {**obj, "metadata": {**obj.get("metadata", {}),
                                    "resourceVersion": current["metadata"]["resourceVersion"]}}
        return await self._call("PUT", object_path(api_version, kind, namespace, name), body)

    async def apply(self, obj: ApiObject) -> ApiObject:
        """Create the object, or replace it if it exists."""
        try:
            return await self.create(obj)
        except DevApiError as error:
            if error.status != 409:
                raise
        return await self.replace(obj)

    async def merge_patch(
        self, api_version: str, kind: str, name: str, patch: ApiObject,
        namespace: str | None = "default", *, status: bool = False,
    ) -> ApiObject:
        path = object_path(api_version, kind, namespace, name) + ("/status" if status else "")
        return await self._call("PATCH", path, patch, "application/merge-patch+json")

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = "default"
    ) -> ApiObject:
        return await self._call("DELETE", object_path(api_version, kind, namespace, name))

    async def refusals(self) -> ApiObject:
        """The requests a server enforcing RBAC (``devapi --rbac``) refused, and their counts."""
        return await self._call("GET", REFUSALS_PATH)
