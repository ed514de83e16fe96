"""HTTP transport to the API server: kubernetes_asyncio provides configuration (kubeconfig,
in-cluster service account, TLS, token refresh); responses are read as raw JSON.

The generated model classes are not used: deserialising 10,000 Services into them costs
seconds, and the model layer validates the raw JSON itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

QueryParams = Sequence[tuple[str, str]]


class ApiError(Exception):
    """The API server answered with an error status (a Status object, usually)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class ResourceExpired(ApiError):
    """410 Gone: the requested resourceVersion is older than the server keeps; relist."""


def error_from_status(status_object: Any, http_status: int) -> ApiError:
    """Turn a Kubernetes Status object (or anything else) into an ApiError."""
    if isinstance(status_object, dict):
        code = status_object.get("code")
        status = code if isinstance(code, int) else http_status
        reason = str(status_object.get("reason") or "")
        message = str(status_object.get("message") or "")
    else:
        status, reason, message = http_status, "", str(status_object)[:200]
    error_type = ResourceExpired if status == 410 else ApiError
    return error_type(status, reason or "Error", message)


class KubeTransport:
    """Raw JSON GETs and line-delimited watch streams over kubernetes_asyncio's connection."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._api = api_client

    @classmethod
    async def connect(cls, kubeconfig: str | None, master: str | None = None) -> KubeTransport:
        """Configure from a kubeconfig file, else in-cluster, else $KUBECONFIG / ~/.kube/config."""
        configuration = k8s_client.Configuration()
        if kubeconfig:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            await k8s_config.load_kube_config(client_configuration=configuration)
        if master:
            configuration.host = master.rstrip("/")
        return cls(k8s_client.ApiClient(configuration))

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def _request(
        self, path: str, params: QueryParams, client_timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self._api.call_api(
            path,
            "GET",
            query_params=list(params),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=client_timeout,
        )
        if response.status >= 300:
            body = await response.read()
            response.release()
            try:
                status_object: Any = json.loads(body)
            except ValueError:
                status_object = body.decode("utf-8", "replace")
            raise error_from_status(status_object, response.status)
        return response

    async def get_json(
        self, path: str, params: QueryParams, request_timeout: float
    ) -> dict[str, Any]:
        response = await self._request(path, params, aiohttp.ClientTimeout(total=request_timeout))
        try:
            body = await response.read()
        finally:
            response.release()
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ApiError(500, "InvalidResponse", f"GET {path}: expected a JSON object")
        return document

    async def watch_lines(
        self, path: str, params: QueryParams, read_timeout: float
    ) -> AsyncIterator[bytes]:
        """Yield each line of a watch stream; ends when the server closes it cleanly.

        Lines are split by hand: aiohttp's readline refuses lines over 64 KiB, and one event
        for a large EndpointSlice can be bigger than that.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        response = await self._request(path, params, timeout)
        try:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:newline], buffer[newline + 1 :]
                    if line.strip():
                        yield line
            if buffer.strip():
                yield buffer
        finally:
            response.close()
