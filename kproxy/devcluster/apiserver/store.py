"""The object store: every object, one global resourceVersion, the change history, watchers.

All operations are synchronous and run on the event loop thread, so each write is atomic with
respect to every read and watch: a list or a watch registration never sees half a write.
Stored bodies are never mutated; a write builds the next version from a copy of one object.
"""

from __future__ import annotations

import bisect
import copy
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kproxy.clock import Clock, SystemClock
from kproxy.devcluster.apiserver import errors
from kproxy.devcluster.apiserver.allocators import IPAllocator, PortAllocator, Reservations
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.fields import drop_unknown
from kproxy.devcluster.apiserver.history import Change, ChangeHistory, EventType
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.kinds.endpointslices import EndpointSliceRules
from kproxy.devcluster.apiserver.kinds.namespaces import UNDELETABLE, NamespaceRules
from kproxy.devcluster.apiserver.kinds.nodes import NodeRules
from kproxy.devcluster.apiserver.kinds.services import ServiceNetwork, ServiceRules
from kproxy.devcluster.apiserver.listing import (
    ListPage,
    View,
    check_list_version_options,
    continuation,
    continue_expired,
    parse_resource_version,
    select_page,
    view_before,
)
from kproxy.devcluster.apiserver.metadata import (
    SYSTEM_METADATA,
    check_identity,
    generate_name,
    metadata_errors,
    new_uid,
    ordered,
    request_namespace,
    timestamp,
)
from kproxy.devcluster.apiserver.objects import JsonObject, ObjectKey, StoredObject
from kproxy.devcluster.apiserver.resources import (
    NAMESPACES,
    RESOURCE_TYPES,
    SERVICES,
    ResourceType,
    find_by_kind,
)
from kproxy.devcluster.apiserver.selectors import FieldSelector, LabelSelector
from kproxy.devcluster.apiserver.watchers import EventEncoder, Watcher, WatchFilter

DEFAULT_SERVICE_CIDRS = ("10.96.0.0/16",)
DEFAULT_NODE_PORT_RANGE = (30000, 32767)
# Changes kept for watches to resume from (all kinds together). Each holds the previous
# version of an object, so this bounds memory under churn as well as resumability.
DEFAULT_HISTORY_SIZE = 50_000
DEFAULT_NAMESPACES = ("default", "kube-system")


@dataclass(slots=True)
class WatchStart:
    """A registered watcher and the events it must send before what its queue receives."""

    watcher: Watcher
    initial_lines: list[bytes]
    resource_version: int


class Store:
    """Objects of every served kind, keyed by (namespace, name) and kept in list order.

    Not thread-safe: use it from the event loop that serves it (tests may call it directly
    between requests; every call is atomic with respect to requests and watches).
    """

    def __init__(
        self,
        *,
        service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
        node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
        history_size: int = DEFAULT_HISTORY_SIZE,
        clock: Clock | None = None,
        seed: int | None = None,
        validate: bool = True,
    ) -> None:
        """``validate=False`` stores objects the kind's rules refuse as they were sent (see
        :meth:`_store_unvalidated`), as a buggy or hostile admission chain could; objects
        the rules accept are defaulted and allocated as always."""
        self.validate = validate
        # Objects stored without validation: they hold no addresses or ports.
        self._unvalidated: set[tuple[str, ObjectKey]] = set()
        self._clock: Clock = clock or SystemClock()
        self._random = random.Random(seed)
        self.network = _service_network(service_cidrs, node_port_range, self._random)
        self._rules: dict[str, KindRules] = {
            rules.resource.plural: rules
            for rules in (
                ServiceRules(self.network),
                EndpointSliceRules(),
                NodeRules(),
                NamespaceRules(),
            )
        }
        self._objects: dict[str, dict[ObjectKey, StoredObject]] = {
            resource.plural: {} for resource in RESOURCE_TYPES
        }
        self._order: dict[str, list[ObjectKey]] = {r.plural: [] for r in RESOURCE_TYPES}
        self._resource_version = 0
        self._history = ChangeHistory(history_size)
        self._watchers: dict[str, set[Watcher]] = {r.plural: set() for r in RESOURCE_TYPES}
        for name in DEFAULT_NAMESPACES:
            self.create(NAMESPACES, {"metadata": {"name": name}})

    # --- versions and history --------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion handed out (one counter across all kinds)."""
        return self._resource_version

    @property
    def history_size(self) -> int:
        return self._history.capacity

    @property
    def oldest_watchable_version(self) -> int:
        return self._history.oldest_available

    def resize_history(self, capacity: int) -> None:
        self._history.resize(capacity)

    def compact(self) -> None:
        """Forget all history: watches and continue tokens from older versions get 410 Gone."""
        self._history.clear(self._resource_version)

    def expire_history(self) -> None:
        """Make every version handed out so far too old to watch from.

        In a real cluster the resourceVersion also moves with writes to kinds this server
        does not keep (Leases, Events), and etcd compaction then expires versions a watcher
        still holds. This reproduces that: one unrelated "write", then a compaction.
        """
        self._resource_version += 1
        self.compact()

    # --- reads -----------------------------------------------------------------------------

    def get(self, resource: ResourceType, namespace: str, name: str) -> StoredObject:
        found = self._objects[resource.plural].get((self._scope(resource, namespace), name))
        if found is None:
            raise errors.not_found(resource.group_resource, name)
        return found

    def find(self, resource: ResourceType, namespace: str, name: str) -> StoredObject | None:
        return self._objects[resource.plural].get((self._scope(resource, namespace), name))

    def objects(self, resource: ResourceType) -> list[StoredObject]:
        """Every object of a kind, in list order."""
        stored = self._objects[resource.plural]
        return [stored[key] for key in self._order[resource.plural]]

    def count(self, resource: ResourceType) -> int:
        return len(self._objects[resource.plural])

    def rules(self, resource: ResourceType) -> KindRules:
        return self._rules[resource.plural]

    def namespace_exists(self, name: str) -> bool:
        return ("", name) in self._objects[NAMESPACES.plural]

    def list_objects(
        self,
        resource: ResourceType,
        *,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> ListPage:
        """One page of a list, with the semantics of the list verb's query parameters."""
        if limit < 0:
            raise errors.bad_request(f"limit must be non-negative, got {limit}")
        start_after: ObjectKey | None = None
        if continue_token:
            if resource_version not in (None, ""):
                raise errors.bad_request(
                    "specifying resource version is not allowed when using continue"
                )
            at, start_after = continuation(continue_token, self._resource_version)
            try:
                view = self._view(resource, at)
            except ApiError:
                raise continue_expired(start_after) from None
        else:
            at = self._list_version(resource_version, resource_version_match)
            view = self._view(resource, at)
        return select_page(
            view,
            resource,
            at,
            namespace=namespace,
            labels=labels or LabelSelector(),
            fields=fields or FieldSelector(),
            limit=limit,
            start_after=start_after,
        )

    def _list_version(self, requested: str | None, match: str | None) -> int:
        check_list_version_options(requested, match)
        number = parse_resource_version(requested)
        if number is None:
            return self._resource_version
        if number > self._resource_version:
            raise errors.too_large_resource_version(number, self._resource_version)
        if match == "Exact":
            if self._history.since(number) is None:
                raise errors.too_old_resource_version(number, self._history.oldest_available)
            return number
        return self._resource_version

    def _view(self, resource: ResourceType, at: int) -> View:
        objects = self._objects[resource.plural]
        order = self._order[resource.plural]
        if at >= self._resource_version:
            return View.current(objects, order)
        changes = self._history.since(at)
        if changes is None:
            raise errors.too_old_resource_version(at, self._history.oldest_available)
        return view_before(objects, order, changes, resource.plural)

    # --- writes ----------------------------------------------------------------------------

    def create(
        self,
        resource: ResourceType,
        body: JsonObject,
        *,
        namespace: str | None = None,
        dry_run: bool = False,
    ) -> StoredObject:
        """Store a new object. The store takes ownership of ``body`` (and may change it)."""
        if not self.validate and not dry_run:
            return self._store_unvalidated(resource, body, namespace, None)
        rules = self._rules[resource.plural]
        metadata = check_identity(resource, body)
        drop_unknown(body, rules.known_fields)
        if metadata.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        scope = request_namespace(resource, metadata, namespace)
        if resource.namespaced and not self.namespace_exists(scope):
            raise errors.not_found(NAMESPACES.group_resource, scope)
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = generate_name(str(metadata["generateName"]), self._random)
        name = str(metadata.get("name") or "")
        problems = metadata_errors(rules, metadata)
        for key in SYSTEM_METADATA:
            metadata.pop(key, None)
        metadata["uid"] = new_uid(self._random)
        metadata["resourceVersion"] = ""  # reserves its place in the field order
        metadata["creationTimestamp"] = timestamp(self._clock)
        if rules.generation_fields:
            metadata["generation"] = 1
        else:
            metadata.pop("generation", None)
        reservations = Reservations()
        try:
            if not problems:
                problems = rules.prepare_create(body, reservations)
            if problems:
                raise errors.invalid(resource.kind, resource.group, name, problems)
            if (scope, name) in self._objects[resource.plural]:
                raise errors.already_exists(resource.group_resource, name)
            if dry_run:
                reservations.rollback()
                metadata.pop("resourceVersion")
                return StoredObject.seal(ordered(body), 0)
        except BaseException:
            reservations.rollback()
            raise
        reservations.commit()
        return self._commit(resource, EventType.ADDED, ordered(body), None)

    def update(
        self,
        resource: ResourceType,
        body: JsonObject,
        *,
        namespace: str | None = None,
        name: str | None = None,
        dry_run: bool = False,
        status_only: bool = False,
    ) -> StoredObject:
        """Replace an object (PUT). A non-empty metadata.resourceVersion that is not the
        current one is a 409 Conflict; status is only changed by ``status_only`` updates."""
        if not self.validate and not dry_run and not status_only:
            return self._store_unvalidated(resource, body, namespace, name)
        rules = self._rules[resource.plural]
        metadata = check_identity(resource, body)
        drop_unknown(body, rules.known_fields)
        scope = request_namespace(resource, metadata, namespace)
        body_name = metadata.get("name")
        if name is None:
            name = str(body_name or "")
        elif body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        metadata["name"] = name
        old = self.get(resource, scope, name)
        wanted_version = metadata.get("resourceVersion")
        if wanted_version and str(wanted_version) != str(old.resource_version):
            raise errors.stale_resource_version(resource.group_resource, name)
        old_uid = old.metadata.get("uid")
        if metadata.get("uid") and metadata["uid"] != old_uid:
            raise errors.precondition_failed(
                resource.group_resource, name, "UID", str(metadata["uid"]), str(old_uid)
            )

        if status_only:
            candidate = old.mutable_copy()
            candidate["status"] = body.get("status") or {}
            problems = rules.validate_status(candidate)
            body = candidate
        else:
            for key in SYSTEM_METADATA:
                metadata.pop(key, None)
            for key in ("uid", "creationTimestamp", "generation"):
                if key in old.metadata:
                    metadata[key] = old.metadata[key]
            if resource.has_status:
                status = copy.deepcopy(old.body.get("status"))
                if status is None:
                    body.pop("status", None)
                else:
                    body["status"] = status
            problems = metadata_errors(rules, metadata)
        body["metadata"]["resourceVersion"] = str(old.resource_version)

        reservations = Reservations()
        try:
            if not problems and not status_only:
                problems = rules.prepare_update(body, old.body, reservations)
            if problems:
                raise errors.invalid(resource.kind, resource.group, name, problems)
            if rules.generation_fields and any(
                body.get(f) != old.body.get(f) for f in rules.generation_fields
            ):
                body["metadata"]["generation"] = int(old.metadata.get("generation", 0)) + 1
            candidate = ordered(body)
            if candidate == old.body:
                reservations.rollback()
                return old  # a no-op update changes nothing, not even the resourceVersion
            if dry_run:
                reservations.rollback()
                return StoredObject.seal(candidate, old.resource_version)
        except BaseException:
            reservations.rollback()
            raise
        reservations.commit()
        return self._commit(resource, EventType.MODIFIED, candidate, old)

    def delete(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        dry_run: bool = False,
    ) -> StoredObject:
        """Delete an object; returns its last state stamped with the deletion's version."""
        old = self.get(resource, namespace, name)
        if uid and uid != old.metadata.get("uid"):
            raise errors.precondition_failed(
                resource.group_resource, name, "UID", uid, str(old.metadata.get("uid"))
            )
        if resource_version and resource_version != str(old.resource_version):
            raise errors.precondition_failed(
                resource.group_resource,
                name,
                "ResourceVersion",
                resource_version,
                str(old.resource_version),
            )
        if resource is NAMESPACES and name in UNDELETABLE:
            raise errors.forbidden(
                resource.group_resource, name, "this namespace may not be deleted"
            )
        if dry_run:
            return old
        if resource is NAMESPACES:
            for contained in RESOURCE_TYPES:
                if contained.namespaced:
                    for obj in self.list_objects(contained, namespace=name).items:
                        self._remove(contained, obj)
        return self._remove(resource, old)

    def delete_collection(
        self,
        resource: ResourceType,
        *,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        dry_run: bool = False,
    ) -> list[StoredObject]:
        doomed = self.list_objects(
            resource, namespace=namespace, labels=labels, fields=fields
        ).items
        if dry_run:
            return doomed
        return [self._remove(resource, obj) for obj in doomed]

    def put(self, body: JsonObject) -> StoredObject:
        """Create or replace an object by its apiVersion and kind (loading manifests)."""
        resource = find_by_kind(str(body.get("apiVersion", "")), str(body.get("kind", "")))
        if resource is None:
            raise errors.bad_request(
                f"no kind {body.get('kind')!r} is registered for version {body.get('apiVersion')!r}"
            )
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            metadata.pop("resourceVersion", None)
            namespace = str(metadata.get("namespace") or "default")
            existing = self.find(resource, namespace, str(metadata.get("name", "")))
            if existing is not None:
                status = body.get("status")
                updated = self.update(resource, body, namespace=namespace)
                if resource.has_status and status is not None:
                    updated = self.update(
                        resource,
                        {"status": status},
                        namespace=namespace,
                        name=updated.name,
                        status_only=True,
                    )
                return updated
        return self.create(resource, body)

    # --- watches ---------------------------------------------------------------------------

    def watch(
        self,
        watch_filter: WatchFilter,
        *,
        resource_version: str | None,
        send_initial_events: bool | None = None,
        capacity: int = 10_000,
        encoder: EventEncoder | None = None,
    ) -> WatchStart:
        """Register a watcher. Unset or "0" resourceVersion starts with the current objects as
        ADDED events; a number N replays every change after N (410 Gone if already dropped)."""
        resource = watch_filter.resource
        number = parse_resource_version(resource_version)
        if number is not None and number > self._resource_version:
            raise errors.too_large_resource_version(number, self._resource_version)
        if send_initial_events is None:
            send_initial_events = number is None
        watcher = Watcher(watch_filter, capacity, encoder)
        lines: list[bytes] = []
        if send_initial_events:
            namespace = watch_filter.namespace
            for obj in self.objects(resource):
                if (namespace is None or obj.namespace == namespace) and watch_filter.matches(obj):
                    lines.append(watcher.encode(EventType.ADDED, obj))
        elif number is not None:
            changes = self._history.since(number)
            if changes is None:
                raise errors.too_old_resource_version(number, self._history.oldest_available)
            replay = Watcher(watch_filter, len(changes) + 1, encoder)
            for change in changes:
                if change.plural == resource.plural:
                    replay.offer(change)
            lines = replay.drain()
        self._watchers[resource.plural].add(watcher)
        return WatchStart(watcher, lines, self._resource_version)

    def stop_watching(self, watcher: Watcher) -> None:
        self._watchers[watcher.filter.resource.plural].discard(watcher)

    # --- persistence -----------------------------------------------------------------------

    def restore(self, resource_version: int, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Replace everything with saved objects and continue the version counter from
        ``resource_version``. History starts empty, so older watch versions get 410 Gone."""
        for registered in self._watchers.values():
            if registered:
                raise RuntimeError("cannot restore a store that has watchers")
        loaded: dict[str, dict[ObjectKey, StoredObject]] = {r.plural: {} for r in RESOURCE_TYPES}
        newest = resource_version
        for body in bodies:
            resource = find_by_kind(str(body.get("apiVersion")), str(body.get("kind")))
            if resource is None:
                raise ValueError(f"unknown kind in saved state: {body.get('kind')!r}")
            version = int(body["metadata"]["resourceVersion"])
            stored = StoredObject.seal(dict(body), version)
            loaded[resource.plural][stored.key] = stored
            newest = max(newest, version)
        self.network = _service_network(
            [str(a.network) for a in self.network.cluster_ips],
            (self.network.node_ports.first, self.network.node_ports.last),
            self._random,
        )
        self._rules[SERVICES.plural] = ServiceRules(self.network)
        self._objects = loaded
        self._order = {plural: sorted(objects) for plural, objects in loaded.items()}
        self._unvalidated.clear()
        for plural, objects in loaded.items():
            for stored in objects.values():
                try:
                    self._rules[plural].restore(stored.body)
                except Exception:
                    if self.validate:
                        raise
                    # Junk saved by a server that did not validate: it holds nothing.
                    self._unvalidated.add((plural, stored.key))
        self._resource_version = newest
        self._history.clear(newest)

    # --- internals -------------------------------------------------------------------------

    def _commit(
        self,
        resource: ResourceType,
        event_type: EventType,
        body: JsonObject,
        previous: StoredObject | None,
    ) -> StoredObject:
        self._resource_version += 1
        version = self._resource_version
        body["metadata"]["resourceVersion"] = str(version)
        stored = StoredObject.seal(body, version)
        objects = self._objects[resource.plural]
        if stored.key not in objects:
            bisect.insort(self._order[resource.plural], stored.key)
        objects[stored.key] = stored
        self._publish(Change(version, resource.plural, event_type, stored.key, stored, previous))
        return stored

    def _store_unvalidated(
        self, resource: ResourceType, body: JsonObject, namespace: str | None, name: str | None
    ) -> StoredObject:
        """Create or replace an object without validation.

        What the kind's rules accept (a valid object) is created or updated as always, on a
        copy; anything else is stored exactly as sent, holding no addresses or ports. Only
        what the storage itself needs is still required: a JSON object of the collection's
        kind whose metadata is an object with a name (a non-empty string, the storage key);
        a namespace that is not a string becomes the request's. The server's own metadata
        (uid, resourceVersion, creationTimestamp) is set as on every write.
        """
        metadata = check_identity(resource, body)
        if name is not None and not metadata.get("name"):
            metadata["name"] = name
        key_name = metadata.get("name")
        if not isinstance(key_name, str) or not key_name:
            raise errors.bad_request("metadata.name must be a non-empty string, even unvalidated")
        if resource.namespaced:
            if not isinstance(metadata.get("namespace"), str):
                metadata["namespace"] = namespace or "default"
            scope = str(metadata["namespace"])
        else:
            metadata.pop("namespace", None)
            scope = ""
        key = (scope, key_name)
        old = self._objects[resource.plural].get(key)
        marker = (resource.plural, key)
        if marker not in self._unvalidated:
            try:
                if old is None:
                    return self._validated_create(resource, copy.deepcopy(body), scope)
                return self._validated_update(resource, copy.deepcopy(body), scope, key_name)
            except ApiError as error:
                if error.code == 409:
                    raise
            except Exception:  # junk the kind's rules cannot even read: stored as sent
                pass
        if old is not None:
            # What a validated version held is given back: the new one holds nothing.
            if marker not in self._unvalidated:
                reservations = Reservations()
                self._rules[resource.plural].release(old.body, reservations)
                reservations.commit()
            metadata["uid"] = old.metadata.get("uid")
            metadata["creationTimestamp"] = old.metadata.get("creationTimestamp")
        else:
            metadata["uid"] = new_uid(self._random)
            metadata["creationTimestamp"] = timestamp(self._clock)
        metadata["resourceVersion"] = ""
        self._unvalidated.add(marker)
        event = EventType.ADDED if old is None else EventType.MODIFIED
        return self._commit(resource, event, ordered(body), old)

    def _validated_create(
        self, resource: ResourceType, body: JsonObject, scope: str
    ) -> StoredObject:
        self.validate = True
        try:
            return self.create(resource, body, namespace=scope)
        finally:
            self.validate = False

    def _validated_update(
        self, resource: ResourceType, body: JsonObject, scope: str, name: str
    ) -> StoredObject:
        self.validate = True
        try:
            return self.update(resource, body, namespace=scope, name=name)
        finally:
            self.validate = False

    def _remove(self, resource: ResourceType, old: StoredObject) -> StoredObject:
        reservations = Reservations()
        marker = (resource.plural, old.key)
        if marker in self._unvalidated:
            self._unvalidated.discard(marker)  # it held nothing
        else:
            self._rules[resource.plural].release(old.body, reservations)
        reservations.commit()
        self._resource_version += 1
        version = self._resource_version
        tombstone = old.restamped(version)
        del self._objects[resource.plural][old.key]
        order = self._order[resource.plural]
        del order[bisect.bisect_left(order, old.key)]
        self._publish(Change(version, resource.plural, EventType.DELETED, old.key, tombstone, old))
        return tombstone

    def _publish(self, change: Change) -> None:
        self._history.append(change)
        for watcher in list(self._watchers[change.plural]):
            watcher.offer(change)
        # Queued watchers hold the encoded events; the history need not keep a copy.
        change.forget_encodings()

    def _scope(self, resource: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if resource.namespaced else ""


def _service_network(
    cidrs: Sequence[str], node_port_range: tuple[int, int], rng: random.Random
) -> ServiceNetwork:
    if not 1 <= len(cidrs) <= 2:
        raise ValueError("give one service CIDR, or two of different IP families")
    allocators = [IPAllocator(cidr.strip(), rng) for cidr in cidrs]
    if len({a.family for a in allocators}) != len(allocators):
        raise ValueError("two service CIDRs must be of different IP families")
    return ServiceNetwork(allocators, PortAllocator(*node_port_range, rng))


def make_filter(
    resource: ResourceType,
    namespace: str | None,
    labels: LabelSelector | None = None,
    fields: FieldSelector | None = None,
) -> WatchFilter:
    return WatchFilter(resource, namespace, labels or LabelSelector(), fields or FieldSelector())
