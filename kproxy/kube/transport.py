"""HTTP transport to the API server: kubernetes_asyncio provides configuration (kubeconfig,
in-cluster service account, TLS); responses are read as raw JSON.

A token read from a file (in-cluster, or a kubeconfig user's ``tokenFile``) is re-read every
minute and after a 401, and the refused request is retried once with the fresh token: a
projected ServiceAccount token expires and the kubelet rewrites the file (see ``tokenfile``).

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
from kubernetes_asyncio.config.incluster_config import SERVICE_TOKEN_FILENAME

from kproxy.kube.tokenfile import TOKEN_REREAD_SECONDS, TokenFile, kubeconfig_token_file

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

    def __init__(
        self, api_client: k8s_client.ApiClient, token_file: TokenFile | None = None
    ) -> None:
        self._api = api_client
        self.token_file = token_file
        # Requests answered 401 and sent again with a token freshly read from the file.
        self.unauthorized_retries = 0
        if token_file is not None:
            configuration = api_client.configuration

            def current_token(_configuration: object) -> None:
                configuration.api_key["BearerToken"] = f"Bearer {token_file.current()}"

            configuration.refresh_api_key_hook = current_token

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | None,
        master: str | None = None,
        *,
        token_reread_interval: float = TOKEN_REREAD_SECONDS,
    ) -> KubeTransport:
        """Configure from a kubeconfig file, else in-cluster, else $KUBECONFIG / ~/.kube/config."""
        configuration = k8s_client.Configuration()
        token_path: str | None = None
        if kubeconfig:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
            token_path = kubeconfig_token_file(kubeconfig)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            # The token is re-read by this transport's own hook (below), on the same
            # schedule as kubernetes_asyncio's, and also after a 401.
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration, try_refresh_token=False
            )
            token_path = SERVICE_TOKEN_FILENAME
        else:
            await k8s_config.load_kube_config(client_configuration=configuration)
        if master:
            configuration.host = master.rstrip("/")
        token_file = (
            TokenFile(token_path, reread_interval=token_reread_interval) if token_path else None
        )
        return cls(k8s_client.ApiClient(configuration), token_file)

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def _request(
        self, path: str, params: QueryParams, client_timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        response = await self._send(path, params, client_timeout)
        if response.status == 401 and self._fresher_token_than(response):
            # The token expired and the file already holds its successor: once more.
            response.release()
            self.unauthorized_retries += 1
            response = await self._send(path, params, client_timeout)
        if response.status >= 300:
            body = await response.read()
            response.release()
            try:
                status_object: Any = json.loads(body)
            except ValueError:
                status_object = body.decode("utf-8", "replace")
            raise error_from_status(status_object, response.status)
        return response

    def _fresher_token_than(self, refused: aiohttp.ClientResponse) -> bool:
        """Re-read the token file; True when it holds another token than the refused request
        carried (another request may have re-read it since that one was sent)."""
        if self.token_file is None:
            return False
        self.token_file.reread()
        sent = refused.request_info.headers.get("Authorization", "")
        return sent != f"Bearer {self.token_file.token}"

    async def _send(
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
