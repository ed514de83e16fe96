"""Informer handlers that parse raw API objects and feed the state tracker.

Handlers only record: parse, log rejections, update the tracker (which asks the sync runner
for a sync). An object the model rejects as a whole (the API server would have refused it)
changes nothing: the last good version of that object stays in force, as it would have had
the API server refused the update, until the object is fixed or deleted. An object the
model leaves out without a rejection (relabelled for another proxy or headless, an FQDN
slice) is treated as absent, so it stops being served.
"""

from __future__ import annotations

from typing import Any

from kproxy.model.endpointslice import parse_endpoint_slice
from kproxy.model.node import parse_node
from kproxy.model.service import parse_service
from kproxy.model.types import NamespacedName, Parsed
from kproxy.rejections import RejectionLog
from kproxy.state import ResourceKind, StateTracker


class ServiceFeed:
    def __init__(self, tracker: StateTracker, rejections: RejectionLog, proxy_name: str) -> None:
        self._tracker = tracker
        self._rejections = rejections
        self._proxy_name = proxy_name

    def on_upsert(self, obj: dict[str, Any]) -> None:
        parsed = parse_service(obj, proxy_name=self._proxy_name)
        self._rejections.record(parsed.rejections)
        if parsed.value is not None:
            self._tracker.upsert_service(parsed.value)
            return
        if _rejected_whole(parsed):
            return
        key = _namespaced_name(obj)
        if key is not None:
            self._tracker.delete_service(key)

    def on_delete(self, namespace: str, name: str) -> None:
        self._tracker.delete_service(NamespacedName(namespace, name))

    def on_listed(self) -> None:
        self._tracker.mark_listed(ResourceKind.SERVICES)


class EndpointSliceFeed:
    def __init__(self, tracker: StateTracker, rejections: RejectionLog, proxy_name: str) -> None:
        self._tracker = tracker
        self._rejections = rejections
        self._proxy_name = proxy_name

    def on_upsert(self, obj: dict[str, Any]) -> None:
        parsed = parse_endpoint_slice(obj, proxy_name=self._proxy_name)
        self._rejections.record(parsed.rejections)
        if parsed.value is not None:
            self._tracker.upsert_endpoint_slice(parsed.value)
            return
        if _rejected_whole(parsed):
            return
        key = _namespaced_name(obj)
        if key is not None:
            self._tracker.delete_endpoint_slice(key.namespace, key.name)

    def on_delete(self, namespace: str, name: str) -> None:
        self._tracker.delete_endpoint_slice(namespace, name)

    def on_listed(self) -> None:
        self._tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)


class NodeFeed:
    """Only this node's Node matters (the informer watches it by name). A rejected update
    keeps the previous NodeInfo."""

    def __init__(self, tracker: StateTracker, rejections: RejectionLog, node_name: str) -> None:
        self._tracker = tracker
        self._rejections = rejections
        self._node_name = node_name

    def on_upsert(self, obj: dict[str, Any]) -> None:
        parsed = parse_node(obj)
        self._rejections.record(parsed.rejections)
        if parsed.value is not None and parsed.value.name == self._node_name:
            self._tracker.set_node(parsed.value)

    def on_delete(self, namespace: str, name: str) -> None:
        if name == self._node_name:
            self._tracker.set_node(None)

    def on_listed(self) -> None:
        self._tracker.mark_listed(ResourceKind.NODE)


def _rejected_whole(parsed: Parsed[Any]) -> bool:
    return any(rejection.whole_object for rejection in parsed.rejections)


def _namespaced_name(obj: dict[str, Any]) -> NamespacedName | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if isinstance(namespace, str) and isinstance(name, str):
        return NamespacedName(namespace, name)
    return None
