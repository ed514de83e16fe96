"""Change tracking between syncs: what the node should forward, and what changed since the
last successful sync.

The tracker holds parsed records only (never raw API objects). Every mutation compares the
new records with the old ones per :class:`ServicePortName`, so an update that changes nothing a
proxy cares about (a resync, a status or annotation bump) marks nothing as changed.

``snapshot()`` hands out an immutable view plus the set of service ports changed since the last
*successful* sync; ``sync_succeeded(snapshot)`` clears exactly those changes (unless they changed
again meanwhile), and a failed sync simply does not call it, so its changes stay pending.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from kproxy.model.endpoints import merge_endpoint_slices
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    NamespacedName,
    NodeInfo,
    ServiceInfo,
    ServicePort,
    ServicePortName,
)

EMPTY_ENDPOINTS: tuple[Endpoint, ...] = ()


class ResourceKind(enum.Enum):
    SERVICES = "services"
    ENDPOINT_SLICES = "endpointslices"
    NODE = "node"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable view of everything the node should forward, at one moment."""

    generation: int
    services: Mapping[ServicePortName, ServicePort]
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]]
    node: NodeInfo | None
    # Service ports changed since the last successful sync (added, updated or removed).
    changed: frozenset[ServicePortName]
    # The node object changed since the last successful sync (zone, pod CIDRs, addresses).
    node_changed: bool
    # Earliest endpoints.kubernetes.io/last-change-trigger-time per changed port, for the
    # network programming latency metric.
    trigger_times: Mapping[ServicePortName, float] = field(default_factory=dict)

    def endpoints_of(self, port_name: ServicePortName) -> tuple[Endpoint, ...]:
        return self.endpoints.get(port_name, EMPTY_ENDPOINTS)


class StateTracker:
    """Accumulates parsed Services, EndpointSlices and this node's Node between syncs.

    ``on_change`` is called after any mutation that changed something (the sync runner's
    ``request``); it must only record, never block.
    """

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._on_change = on_change
        self._service_ports: dict[NamespacedName, dict[ServicePortName, ServicePort]] = {}
        self._slices: dict[NamespacedName, dict[str, EndpointSliceInfo]] = {}
        # (namespace, slice name) -> the service it belongs to, so deletes need only the key.
        self._slice_owner: dict[tuple[str, str], NamespacedName] = {}
        self._endpoints_by_service: dict[
            NamespacedName, dict[ServicePortName, tuple[Endpoint, ...]]
        ] = {}
        self._services_flat: dict[ServicePortName, ServicePort] = {}
        self._endpoints_flat: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        self._node: NodeInfo | None = None
        self._listed: set[ResourceKind] = set()
        # Pending changes: port name -> the generation in which it last changed.
        self._pending: dict[ServicePortName, int] = {}
        self._trigger_times: dict[ServicePortName, float] = {}
        self._node_changed_at: int | None = None
        self._generation = 0
        self._cached_snapshot: Snapshot | None = None
        # For kube-proxy's change metrics: every Service / EndpointSlice event seen, and the
        # services with real, not yet synced changes of each kind (name -> generation).
        self.service_changes_total = 0
        self.endpoint_changes_total = 0
        self._pending_service_changes: dict[NamespacedName, int] = {}
        self._pending_endpoint_changes: dict[NamespacedName, int] = {}

    # -- readiness ---------------------------------------------------------------------------

    def mark_listed(self, kind: ResourceKind) -> None:
        """Record that the first complete list of ``kind`` has been applied."""
        if kind not in self._listed:
            self._listed.add(kind)
            self._notify()

    @property
    def ready(self) -> bool:
        """True once Services and EndpointSlices have each been listed completely once.

        Programming anything before that would delete every service not yet seen.
        """
        return {ResourceKind.SERVICES, ResourceKind.ENDPOINT_SLICES} <= self._listed

    # -- services ------------------------------------------------------------------------------

    def upsert_service(self, service: ServiceInfo) -> None:
        self.service_changes_total += 1
        new_ports = {port.name: port for port in service.ports}
        old_ports = self._service_ports.get(service.key, {})
        changed = _changed_keys(old_ports, new_ports)
        if new_ports:
            self._service_ports[service.key] = new_ports
        else:
            self._service_ports.pop(service.key, None)
        for port_name in changed:
            if port_name in new_ports:
                self._services_flat[port_name] = new_ports[port_name]
            else:
                self._services_flat.pop(port_name, None)
        if self._mark_changed(changed):
            self._pending_service_changes[service.key] = self._generation

    def delete_service(self, key: NamespacedName) -> None:
        self.upsert_service(ServiceInfo(key.namespace, key.name, ()))

    # -- endpoint slices -----------------------------------------------------------------------

    def upsert_endpoint_slice(self, endpoint_slice: EndpointSliceInfo) -> None:
        self.endpoint_changes_total += 1
        slice_key = (endpoint_slice.namespace, endpoint_slice.name)
        previous_owner = self._slice_owner.get(slice_key)
        if previous_owner is not None and previous_owner != endpoint_slice.service:
            # The slice was relabelled to another service: it leaves the old one first.
            self._remove_endpoint_slice(endpoint_slice.namespace, endpoint_slice.name)
        self._slice_owner[slice_key] = endpoint_slice.service
        slices = self._slices.setdefault(endpoint_slice.service, {})
        slices[endpoint_slice.name] = endpoint_slice
        self._remerge(endpoint_slice.service, endpoint_slice.last_change_trigger_time)

    def delete_endpoint_slice(self, namespace: str, slice_name: str) -> None:
        self.endpoint_changes_total += 1
        self._remove_endpoint_slice(namespace, slice_name)

    def _remove_endpoint_slice(self, namespace: str, slice_name: str) -> None:
        service = self._slice_owner.pop((namespace, slice_name), None)
        if service is None:
            return
        slices = self._slices[service]
        del slices[slice_name]
        if not slices:
            del self._slices[service]
        self._remerge(service, None)

    def _remerge(self, service: NamespacedName, trigger_time: float | None) -> None:
        slices = self._slices.get(service)
        merged = merge_endpoint_slices(slices.values()) if slices else {}
        old = self._endpoints_by_service.get(service, {})
        changed = _changed_keys(old, merged)
        if merged:
            self._endpoints_by_service[service] = merged
        else:
            self._endpoints_by_service.pop(service, None)
        for port_name in changed:
            if port_name in merged:
                self._endpoints_flat[port_name] = merged[port_name]
            else:
                self._endpoints_flat.pop(port_name, None)
        if trigger_time is not None:
            for port_name in changed:
                known = self._trigger_times.get(port_name)
                if known is None or trigger_time < known:
                    self._trigger_times[port_name] = trigger_time
        if self._mark_changed(changed):
            self._pending_endpoint_changes[service] = self._generation

    # -- node ------------------------------------------------------------------------------------

    def set_node(self, node: NodeInfo | None) -> None:
        if node == self._node:
            return
        self._node = node
        self._generation += 1
        self._node_changed_at = self._generation
        self._cached_snapshot = None
        self._notify()

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """An immutable view of the current state; cheap when nothing changed since the last."""
        if self._cached_snapshot is not None:
            return self._cached_snapshot
        pending = frozenset(self._pending)
        snapshot = Snapshot(
            generation=self._generation,
            services=MappingProxyType(dict(self._services_flat)),
            endpoints=MappingProxyType(dict(self._endpoints_flat)),
            node=self._node,
            changed=pending,
            node_changed=self._node_changed_at is not None,
            trigger_times=MappingProxyType(
                {name: t for name, t in self._trigger_times.items() if name in pending}
            ),
        )
        self._cached_snapshot = snapshot
        return snapshot

    def sync_succeeded(self, snapshot: Snapshot) -> None:
        """Forget the changes that ``snapshot`` carried, unless they changed again since."""
        for port_name in snapshot.changed:
            if self._pending.get(port_name, snapshot.generation + 1) <= snapshot.generation:
                del self._pending[port_name]
                self._trigger_times.pop(port_name, None)
        if self._node_changed_at is not None and self._node_changed_at <= snapshot.generation:
            self._node_changed_at = None
        for pending in (self._pending_service_changes, self._pending_endpoint_changes):
            for service, generation in list(pending.items()):
                if generation <= snapshot.generation:
                    del pending[service]
        self._cached_snapshot = None

    @property
    def pending_changes(self) -> int:
        return len(self._pending)

    @property
    def pending_service_changes(self) -> int:
        """Services whose own spec changed since the last successful sync."""
        return len(self._pending_service_changes)

    @property
    def pending_endpoint_changes(self) -> int:
        """Services whose endpoints changed since the last successful sync."""
        return len(self._pending_endpoint_changes)

    @property
    def node(self) -> NodeInfo | None:
        return self._node

    @property
    def service_count(self) -> int:
        return len(self._service_ports)

    @property
    def endpoint_slice_count(self) -> int:
        return sum(len(slices) for slices in self._slices.values())

    # -- internals -------------------------------------------------------------------------------

    def _mark_changed(self, changed: Iterable[ServicePortName]) -> bool:
        """Record real changes; True when there were any."""
        changed = list(changed)
        if not changed:
            return False
        self._generation += 1
        for port_name in changed:
            self._pending[port_name] = self._generation
        self._cached_snapshot = None
        self._notify()
        return True

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change()


K = TypeVar("K")
V = TypeVar("V")


def _changed_keys(old: Mapping[K, V], new: Mapping[K, V]) -> list[K]:
    """Keys added, removed, or whose value differs between two mappings."""
    changed = [key for key, value in new.items() if old.get(key) != value]
    changed.extend(key for key in old if key not in new)
    return changed
