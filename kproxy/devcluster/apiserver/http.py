"""HTTP routes: discovery, and list/watch/get/create/update/patch/delete for every kind.

Requests are parsed here into store calls; every failure becomes a ``Status`` response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from kproxy.clock import Clock
from kproxy.devcluster.apiserver import discovery, errors, openapi, protobuf
from kproxy.devcluster.apiserver.access import REFUSALS_PATH, AccessControl
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.history import EventType, event_line
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.listing import ListPage
from kproxy.devcluster.apiserver.negotiation import Negotiated, Representation, negotiate
from kproxy.devcluster.apiserver.objects import JsonObject, StoredObject, encode
from kproxy.devcluster.apiserver.params import (
    check_fields,
    dry_run,
    flag,
    integer,
    list_options_error,
    with_warnings,
)
from kproxy.devcluster.apiserver.patch import (
    JSON_PATCH,
    MERGE_PATCH,
    PATCH_CONTENT_TYPES,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from kproxy.devcluster.apiserver.paths import ResourcePath, parse_resource_path
from kproxy.devcluster.apiserver.resources import ResourceType
from kproxy.devcluster.apiserver.selectors import (
    FieldSelector,
    FieldTerm,
    LabelSelector,
    parse_field_selector,
    parse_label_selector,
)
from kproxy.devcluster.apiserver.store import Store, make_filter
from kproxy.devcluster.apiserver.tables import partial_metadata, table
from kproxy.devcluster.apiserver.watch_stream import (
    WatchOptions,
    stream_error,
    stream_watch,
)
from kproxy.devcluster.apiserver.watchers import CloseReason, EventEncoder, Watcher

log = logging.getLogger(__name__)

JSON = "application/json"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
MAX_REQUEST_BYTES = 16 * 1024 * 1024
_HEALTH_PATHS = ("/healthz", "/livez", "/readyz")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(raw: bytes, status: int = 200) -> web.Response:
    return web.Response(
        body=raw,
        status=status,
        headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"},
    )


def status_response(error: ApiError) -> web.Response:
    response = json_response(encode(error.status()), error.code)
    response.headers.update(error.headers)
    return response


def _list_body(resource: ResourceType, page: ListPage) -> bytes:
    """The list as JSON, joined from the objects' stored encodings (nothing re-encoded)."""
    head = {
        "kind": resource.list_kind,
        "apiVersion": resource.api_version,
        "metadata": _list_metadata(page),
    }
    prefix = encode(head)[:-1]  # drop the closing brace to append the items
    return prefix + b',"items":[' + b",".join(obj.raw for obj in page.items) + b"]}"


def _list_metadata(page: ListPage) -> JsonObject:
    metadata: JsonObject = {"resourceVersion": str(page.resource_version)}
    if page.continue_token:
        metadata["continue"] = page.continue_token
    if page.remaining_item_count is not None:
        metadata["remainingItemCount"] = page.remaining_item_count
    return metadata


def _over_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


class ApiHandlers:
    """The request handlers of one server, bound to its store and its open watches."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        bookmark_interval: float,
        watch_queue_size: int,
        access: AccessControl | None = None,
    ) -> None:
        self.store = store
        self.access = access
        self.clock = clock
        self.bookmark_interval = bookmark_interval
        self.watch_queue_size = watch_queue_size
        self.open_watches: set[Watcher] = set()
        self._no_open_watches = asyncio.Event()
        self._no_open_watches.set()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._log_requests], client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{path:.*}", self.dispatch)
        return app

    async def wait_for_watches_to_end(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._no_open_watches.wait()
        except TimeoutError:
            return False
        return True

    def close_watches(self, reason: CloseReason) -> int:
        watchers = list(self.open_watches)
        for watcher in watchers:
            watcher.close(reason)
        return len(watchers)

    @web.middleware
    async def _log_requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        outcome = "cancelled"  # a watch whose client went away ends by cancellation
        try:
            response = await handler(request)
            outcome = str(response.status)
            return response
        finally:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s -> %s (%.1f ms)",
                    request.method,
                    request.path_qs,
                    outcome,
                    (time.monotonic() - started) * 1000,
                )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            route = parse_resource_path(request.path)
            if self.access is not None:
                denial = self.access.check(
                    method=request.method,
                    path=request.path,
                    route=route,
                    watch=bool(route is not None and flag(request, "watch")),
                    authorization=request.headers.get("Authorization"),
                    local_socket=_over_unix_socket(request),
                )
                if denial is not None:
                    raise denial
                if request.path.rstrip("/") == REFUSALS_PATH:
                    return json_response(encode(self.access.report()))
            if route is None:
                return self._non_resource(request)
            return await self._resource(request, route)
        except ApiError as error:
            return status_response(error)
        except Exception as error:
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            return status_response(
                ApiError(500, "InternalError", f"Internal error occurred: {error}")
            )

    # --- discovery and health --------------------------------------------------------------

    def _non_resource(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in _HEALTH_PATHS or path.startswith(tuple(p + "/" for p in _HEALTH_PATHS)):
            return web.Response(text="ok", content_type="text/plain")
        if path.startswith("/openapi/v3"):
            served = openapi.document_for(path)
            if served is None:
                raise errors.path_not_found()
            return json_response(served)
        document: Any = None
        segments = path.strip("/").split("/")
        if path == "/version":
            document = discovery.version_info()
        elif path == "/api":
            document = discovery.core_versions(request.host)
        elif path == "/apis":
            document = discovery.group_list()
        elif len(segments) == 2 and segments[0] == "apis":
            document = discovery.api_group(segments[1])
        elif len(segments) == 2 and segments[0] == "api":
            document = discovery.resource_list("", segments[1])
        elif len(segments) == 3 and segments[0] == "apis":
            document = discovery.resource_list(segments[1], segments[2])
        if document is None:
            raise errors.path_not_found()
        if request.method not in ("GET", "HEAD"):
            raise errors.method_not_allowed()
        return json_response(encode(document))

    # --- resources -------------------------------------------------------------------------

    async def _resource(self, request: web.Request, route: ResourcePath) -> web.StreamResponse:
        resource = route.resource
        if route.subresource not in (None, "status") or (
            route.subresource == "status" and not resource.has_status
        ):
            raise errors.path_not_found()
        method = request.method
        if route.name is None:
            if method in ("GET", "HEAD"):
                if route.legacy_watch or flag(request, "watch"):
                    return await self._watch(request, route, None)
                return self._list(request, route)
            if route.legacy_watch:
                raise errors.method_not_allowed()
            if method == "POST":
                return await self._create(request, route)
            if method == "DELETE":
                return await self._delete_collection(request, route)
            raise errors.method_not_allowed()

        if resource.namespaced and route.namespace is None:
            raise errors.path_not_found()
        if route.legacy_watch:
            if method != "GET" or route.subresource:
                raise errors.method_not_allowed()
            return await self._watch(request, route, route.name)
        if method in ("GET", "HEAD"):
            return self._get(request, route)
        if method == "PUT":
            return await self._update(request, route)
        if method == "PATCH":
            return await self._patch(request, route)
        if method == "DELETE" and route.subresource is None:
            return await self._delete(request, route)
        raise errors.method_not_allowed()

    def _selectors(
        self, request: web.Request, resource: ResourceType
    ) -> tuple[LabelSelector, FieldSelector]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(
            request.query.get("fieldSelector"), resource.selectable_fields
        )
        return labels, fields

    def _negotiate(self, request: web.Request) -> Negotiated:
        return negotiate(request.headers.get("Accept"), allow_transforms=True)

    def _get(self, request: web.Request, route: ResourcePath) -> web.Response:
        negotiated = self._negotiate(request)
        obj = self.store.get(route.resource, route.namespace or "", route.name or "")
        if negotiated.representation is Representation.TABLE:
            document = table(
                route.resource,
                [obj],
                now=self.clock.wall(),
                meta_version=negotiated.meta_version,
                include_object=request.query.get("includeObject", "Metadata"),
                list_metadata={"resourceVersion": str(obj.resource_version)},
            )
            return json_response(encode(document))
        if negotiated.representation is Representation.METADATA:
            return json_response(encode(partial_metadata(obj, negotiated.meta_version)))
        return json_response(obj.raw)

    def _list(self, request: web.Request, route: ResourcePath) -> web.Response:
        negotiated = self._negotiate(request)
        resource = route.resource
        labels, fields = self._selectors(request, resource)
        limit = integer(request, "limit") or 0
        page = self.store.list_objects(
            resource,
            namespace=route.namespace,
            labels=labels,
            fields=fields,
            limit=limit,
            continue_token=request.query.get("continue") or None,
            resource_version=request.query.get("resourceVersion"),
            resource_version_match=request.query.get("resourceVersionMatch") or None,
        )
        if negotiated.representation is Representation.TABLE:
            document = table(
                resource,
                page.items,
                now=self.clock.wall(),
                meta_version=negotiated.meta_version,
                include_object=request.query.get("includeObject", "Metadata"),
                list_metadata=_list_metadata(page),
            )
            return json_response(encode(document))
        if negotiated.representation is Representation.METADATA:
            document = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": f"meta.k8s.io/{negotiated.meta_version}",
                "metadata": _list_metadata(page),
                "items": [partial_metadata(obj, negotiated.meta_version) for obj in page.items],
            }
            return json_response(encode(document))
        return json_response(_list_body(resource, page))

    async def _watch(
        self, request: web.Request, route: ResourcePath, name: str | None
    ) -> web.StreamResponse:
        resource = route.resource
        negotiated = self._negotiate(request)
        labels, fields = self._selectors(request, resource)
        if name is not None:  # the old /watch/.../{name} form watches one object
            fields = FieldSelector((FieldTerm("metadata.name", name, False), *fields.terms))
        bookmarks = bool(flag(request, "allowWatchBookmarks"))
        send_initial = flag(request, "sendInitialEvents")
        match = request.query.get("resourceVersionMatch") or None
        if send_initial is not None:
            if match != "NotOlderThan":
                raise list_options_error(
                    "resourceVersionMatch",
                    match or "",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                )
            if not bookmarks:
                raise list_options_error(
                    "sendInitialEvents",
                    send_initial,
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                )
        elif match is not None:
            raise list_options_error(
                "resourceVersionMatch", match, "resourceVersionMatch is forbidden for watch"
            )
        timeout = integer(request, "timeoutSeconds")
        watch_filter = make_filter(resource, route.namespace, labels, fields)
        try:
            start = self.store.watch(
                watch_filter,
                resource_version=request.query.get("resourceVersion"),
                send_initial_events=send_initial,
                capacity=self.watch_queue_size,
                encoder=self._encoder(request, resource, negotiated),
            )
        except ApiError as error:
            if error.code == 410:
                return await stream_error(request, error)
            raise
        options = WatchOptions(
            timeout_seconds=float(timeout) if timeout and timeout > 0 else None,
            bookmarks=bookmarks,
            bookmark_interval=self.bookmark_interval,
            initial_events_end=bool(send_initial),
        )
        self.open_watches.add(start.watcher)
        self._no_open_watches.clear()
        try:
            return await stream_watch(request, start, options, lambda: self.store.resource_version)
        finally:
            self.store.stop_watching(start.watcher)
            self.open_watches.discard(start.watcher)
            if not self.open_watches:
                self._no_open_watches.set()

    def _encoder(
        self, request: web.Request, resource: ResourceType, negotiated: Negotiated
    ) -> EventEncoder | None:
        if negotiated.representation is Representation.OBJECT:
            return None
        include = request.query.get("includeObject", "Metadata")

        def as_table(event_type: EventType, obj: StoredObject) -> bytes:
            document = table(
                resource,
                [obj],
                now=self.clock.wall(),
                meta_version=negotiated.meta_version,
                include_object=include,
                list_metadata={"resourceVersion": str(obj.resource_version)},
            )
            return event_line(event_type, encode(document))

        def as_metadata(event_type: EventType, obj: StoredObject) -> bytes:
            return event_line(event_type, encode(partial_metadata(obj, negotiated.meta_version)))

        if negotiated.representation is Representation.TABLE:
            return as_table
        return as_metadata

    # --- writes ----------------------------------------------------------------------------

    async def _read_body(self, request: web.Request, *, allow_patch_types: bool = False) -> Any:
        content_type = request.content_type
        raw = await request.read()
        if allow_patch_types:
            if content_type not in PATCH_CONTENT_TYPES:
                raise errors.unsupported_media_type(content_type, list(PATCH_CONTENT_TYPES))
        elif content_type in YAML_TYPES:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as error:
                raise errors.bad_request(f"error decoding YAML: {error}") from None
        elif content_type == protobuf.MEDIA_TYPE:
            return self._decode_protobuf(raw)
        elif content_type not in (JSON, "application/octet-stream", ""):
            raise errors.unsupported_media_type(content_type, [JSON, "application/yaml"])
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise errors.bad_request(f"error decoding request body: {error}") from None

    def _decode_protobuf(self, raw: bytes) -> Any:
        try:
            return protobuf.decode_object(raw)
        except protobuf.ProtobufError as error:
            if raw.startswith(protobuf.MAGIC):
                raise errors.unsupported_media_type(
                    f"{protobuf.MEDIA_TYPE} ({error})", [JSON, "application/yaml"]
                ) from None
            raise errors.bad_request(f"error decoding protobuf body: {error}") from None

    def _namespace_for_write(self, route: ResourcePath) -> str | None:
        if route.resource.namespaced and route.namespace is None:
            raise errors.method_not_allowed()
        return route.namespace

    async def _create(self, request: web.Request, route: ResourcePath) -> web.Response:
        namespace = self._namespace_for_write(route)
        body = await self._read_body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        warnings = check_fields(request, self.store.rules(route.resource), body)
        obj = self.store.create(route.resource, body, namespace=namespace, dry_run=dry_run(request))
        return with_warnings(json_response(obj.raw, 201), warnings)

    async def _update(self, request: web.Request, route: ResourcePath) -> web.Response:
        body = await self._read_body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        warnings = check_fields(request, self.store.rules(route.resource), body)
        obj = self.store.update(
            route.resource,
            body,
            namespace=route.namespace,
            name=route.name,
            dry_run=dry_run(request),
            status_only=route.subresource == "status",
        )
        return with_warnings(json_response(obj.raw), warnings)

    async def _patch(self, request: web.Request, route: ResourcePath) -> web.Response:
        resource = route.resource
        patch = await self._read_body(request, allow_patch_types=True)
        current = self.store.get(resource, route.namespace or "", route.name or "")
        rules: KindRules = self.store.rules(resource)
        try:
            if request.content_type == JSON_PATCH:
                patched = json_patch(current.mutable_copy(), patch)
            elif request.content_type == MERGE_PATCH:
                if not isinstance(patch, dict):
                    raise PatchError("a merge patch must be a JSON object")
                patched = merge_patch(current.mutable_copy(), patch)
            else:
                assert request.content_type == STRATEGIC_MERGE_PATCH
                patched = strategic_merge_patch(current.mutable_copy(), patch, rules.patch_schema)
        except PatchError as error:
            if error.code == 422:
                raise ApiError(422, "Invalid", str(error)) from None
            raise errors.bad_request(str(error)) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object must be a JSON object")
        warnings = check_fields(request, rules, patched)
        obj = self.store.update(
            resource,
            patched,
            namespace=route.namespace,
            name=route.name,
            dry_run=dry_run(request),
            status_only=route.subresource == "status",
        )
        return with_warnings(json_response(obj.raw), warnings)

    async def _delete(self, request: web.Request, route: ResourcePath) -> web.Response:
        resource = route.resource
        options = await self._read_body(request)
        if options is not None and not isinstance(options, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
        preconditions = (options or {}).get("preconditions") or {}
        deleted = self.store.delete(
            resource,
            route.namespace or "",
            route.name or "",
            uid=preconditions.get("uid"),
            resource_version=preconditions.get("resourceVersion"),
            dry_run=dry_run(request, options),
        )
        if resource.returns_deleted_object:
            return json_response(deleted.raw)
        details: JsonObject = {"name": deleted.name}
        if resource.group:
            details["group"] = resource.group
        details["kind"] = resource.plural
        details["uid"] = deleted.metadata.get("uid", "")
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }
        return json_response(encode(status))

    async def _delete_collection(self, request: web.Request, route: ResourcePath) -> web.Response:
        resource = route.resource
        if not resource.supports("deletecollection"):
            raise errors.method_not_allowed()
        options = await self._read_body(request)
        labels, fields = self._selectors(request, resource)
        deleted = self.store.delete_collection(
            resource,
            namespace=route.namespace,
            labels=labels,
            fields=fields,
            dry_run=dry_run(request, options if isinstance(options, dict) else None),
        )
        page = ListPage(deleted, self.store.resource_version)
        return json_response(_list_body(resource, page))
