"""A minimal OpenAPI v3 index, enough for kubectl to use server-side field validation.

kubectl decides whether to validate on the server by looking, in ``/openapi/v3``, for a PATCH
operation tagged with the object's group/version/kind that takes a ``fieldValidation`` query
parameter; without one it wants the full ``/openapi/v2`` schema to validate on the client.

The PATCH operations listed here deliberately name only JSON patch and JSON merge patch as
request bodies. kubectl then computes ``apply`` patches from its built-in knowledge of the
Kubernetes types (exact strategic merge semantics) instead of from schemas, which this server
does not publish. The server still accepts strategic merge patches.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from kproxy.devcluster.apiserver.discovery import GIT_VERSION
from kproxy.devcluster.apiserver.objects import encode
from kproxy.devcluster.apiserver.resources import ResourceType, group_versions, resources_in

_QUERY_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")
_OBJECT_SCHEMA = {"schema": {"type": "object"}}


def _path_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _item_path(resource: ResourceType) -> str:
    prefix = "/" + _path_key(resource.group, resource.version)
    if resource.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{resource.plural}/{{name}}"
    return f"{prefix}/{resource.plural}/{{name}}"


def _patch_operation(resource: ResourceType) -> dict[str, Any]:
    return {
        "operationId": f"patch{resource.kind}",
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {
            "group": resource.group,
            "version": resource.version,
            "kind": resource.kind,
        },
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in _QUERY_PARAMETERS
        ],
        "requestBody": {
            "content": {
                "application/json-patch+json": _OBJECT_SCHEMA,
                "application/merge-patch+json": _OBJECT_SCHEMA,
            },
            "required": True,
        },
        "responses": {
            "200": {"description": "OK", "content": {"application/json": _OBJECT_SCHEMA}}
        },
    }


@cache
def group_version_document(group: str, version: str) -> bytes | None:
    served = resources_in(group, version)
    if not served:
        return None
    document = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": {
            _item_path(resource): {"patch": _patch_operation(resource)} for resource in served
        },
        "components": {"schemas": {}},
    }
    return encode(document)


@cache
def index_document() -> bytes:
    paths = {}
    for group, version in group_versions():
        document = group_version_document(group, version)
        assert document is not None
        digest = hashlib.sha512(document).hexdigest().upper()
        key = _path_key(group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return encode({"paths": paths})


def document_for(path: str) -> bytes | None:
    """The document served at an ``/openapi/v3...`` path, or None."""
    trimmed = path.rstrip("/")
    if trimmed == "/openapi/v3":
        return index_document()
    segments = trimmed.split("/")[3:]
    if len(segments) == 2 and segments[0] == "api":
        return group_version_document("", segments[1])
    if len(segments) == 3 and segments[0] == "apis":
        return group_version_document(segments[1], segments[2])
    return None
