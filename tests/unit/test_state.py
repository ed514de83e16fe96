"""The state tracker: change sets, snapshots, readiness and the success/failure contract."""

from __future__ import annotations

import pytest

from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    NamespacedName,
    NodeInfo,
    Protocol,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import ResourceKind, StateTracker


def port_name(service: str, port: str = "http", namespace: str = "default") -> ServicePortName:
    return ServicePortName(namespace, service, port, Protocol.TCP)


def service(name: str, *ports: tuple[str, int], cluster_ip: str = "10.96.0.10") -> ServiceInfo:
    return ServiceInfo(
        "default",
        name,
        tuple(
            ServicePort(
                name=port_name(name, pname),
                type=ServiceType.CLUSTER_IP,
                cluster_ips=(cluster_ip,),
                port=number,
                protocol=Protocol.TCP,
                target_port=number,
            )
            for pname, number in ports
        ),
    )


def endpoint_slice(
    slice_name: str, service_name: str, *ips: str, port: int = 8080, trigger: float | None = None
) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace="default",
        name=slice_name,
        service_name=service_name,
        address_type=IPFamily.IPV4,
        ports=(EndpointSlicePort("http", port, Protocol.TCP),),
        endpoints=tuple(Endpoint(ip=ip, port=0) for ip in ips),
        last_change_trigger_time=trigger,
    )


@pytest.fixture
def tracker() -> StateTracker:
    return StateTracker()


def test_not_ready_until_services_and_slices_are_both_listed(tracker: StateTracker) -> None:
    assert not tracker.ready
    tracker.mark_listed(ResourceKind.SERVICES)
    assert not tracker.ready
    tracker.mark_listed(ResourceKind.NODE)
    assert not tracker.ready
    tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    assert tracker.ready


def test_new_service_appears_in_snapshot_and_change_set(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80), ("metrics", 9090)))
    snap = tracker.snapshot()
    assert set(snap.services) == {port_name("web", "http"), port_name("web", "metrics")}
    assert snap.changed == {port_name("web", "http"), port_name("web", "metrics")}
    assert snap.services[port_name("web", "http")].port == 80


def test_identical_update_marks_nothing_changed(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80)))
    tracker.sync_succeeded(tracker.snapshot())
    tracker.upsert_service(service("web", ("http", 80)))
    assert tracker.snapshot().changed == frozenset()


def test_only_the_changed_port_is_marked(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80), ("metrics", 9090)))
    tracker.sync_succeeded(tracker.snapshot())
    tracker.upsert_service(service("web", ("http", 81), ("metrics", 9090)))
    assert tracker.snapshot().changed == {port_name("web", "http")}


def test_removed_port_and_deleted_service_are_in_change_set(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80), ("metrics", 9090)))
    tracker.sync_succeeded(tracker.snapshot())
    tracker.upsert_service(service("web", ("http", 80)))
    snap = tracker.snapshot()
    assert snap.changed == {port_name("web", "metrics")}
    assert port_name("web", "metrics") not in snap.services
    tracker.sync_succeeded(snap)
    tracker.delete_service(NamespacedName("default", "web"))
    snap = tracker.snapshot()
    assert snap.changed == {port_name("web", "http")}
    assert snap.services == {}


def test_failed_sync_keeps_changes_pending(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80)))
    first = tracker.snapshot()
    # No sync_succeeded: the sync failed.
    tracker.upsert_service(service("api", ("http", 80)))
    second = tracker.snapshot()
    assert second.changed == {port_name("web"), port_name("api")}
    tracker.sync_succeeded(second)
    assert tracker.snapshot().changed == frozenset()
    assert first.changed == {port_name("web")}  # snapshots are immutable


def test_change_after_snapshot_survives_success_of_that_snapshot(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80)))
    snap = tracker.snapshot()
    tracker.upsert_service(service("web", ("http", 8000)))  # changes again while syncing
    tracker.sync_succeeded(snap)
    later = tracker.snapshot()
    assert later.changed == {port_name("web")}
    assert later.services[port_name("web")].port == 8000


def test_snapshot_is_immutable_and_isolated_from_later_changes(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80)))
    snap = tracker.snapshot()
    tracker.upsert_service(service("api", ("http", 80)))
    assert set(snap.services) == {port_name("web")}
    with pytest.raises(TypeError):
        snap.services[port_name("x")] = snap.services[port_name("web")]  # type: ignore[index]


def test_slices_of_one_service_are_merged(tracker: StateTracker) -> None:
    tracker.upsert_endpoint_slice(endpoint_slice("web-a", "web", "10.244.1.2", "10.244.1.3"))
    tracker.upsert_endpoint_slice(endpoint_slice("web-b", "web", "10.244.2.2"))
    endpoints = tracker.snapshot().endpoints_of(port_name("web"))
    assert sorted(e.ip for e in endpoints) == ["10.244.1.2", "10.244.1.3", "10.244.2.2"]
    assert {e.port for e in endpoints} == {8080}


def test_deleting_a_slice_removes_only_its_endpoints(tracker: StateTracker) -> None:
    tracker.upsert_endpoint_slice(endpoint_slice("web-a", "web", "10.244.1.2"))
    tracker.upsert_endpoint_slice(endpoint_slice("web-b", "web", "10.244.2.2"))
    tracker.sync_succeeded(tracker.snapshot())
    tracker.delete_endpoint_slice("default", "web-a")
    snap = tracker.snapshot()
    assert [e.ip for e in snap.endpoints_of(port_name("web"))] == ["10.244.2.2"]
    assert snap.changed == {port_name("web")}
    tracker.delete_endpoint_slice("default", "web-b")
    assert tracker.snapshot().endpoints_of(port_name("web")) == ()
    tracker.delete_endpoint_slice("default", "never-existed")  # harmless


def test_slice_relabelled_to_another_service_moves(tracker: StateTracker) -> None:
    tracker.upsert_endpoint_slice(endpoint_slice("s1", "web", "10.244.1.2"))
    tracker.upsert_endpoint_slice(endpoint_slice("s1", "api", "10.244.1.2"))
    snap = tracker.snapshot()
    assert snap.endpoints_of(port_name("web")) == ()
    assert [e.ip for e in snap.endpoints_of(port_name("api"))] == ["10.244.1.2"]


def test_trigger_time_is_the_earliest_per_changed_port(tracker: StateTracker) -> None:
    tracker.upsert_endpoint_slice(endpoint_slice("s1", "web", "10.244.1.2", trigger=200.0))
    tracker.upsert_endpoint_slice(endpoint_slice("s1", "web", "10.244.1.3", trigger=300.0))
    snap = tracker.snapshot()
    assert snap.trigger_times == {port_name("web"): 200.0}
    tracker.sync_succeeded(snap)
    assert tracker.snapshot().trigger_times == {}


def test_node_change_flag_until_a_sync_succeeds(tracker: StateTracker) -> None:
    tracker.set_node(NodeInfo(name="node-1", labels=(("topology.kubernetes.io/zone", "a"),)))
    snap = tracker.snapshot()
    assert snap.node_changed and snap.node is not None and snap.node.zone == "a"
    tracker.sync_succeeded(snap)
    assert not tracker.snapshot().node_changed
    tracker.set_node(NodeInfo(name="node-1", labels=(("topology.kubernetes.io/zone", "a"),)))
    assert not tracker.snapshot().node_changed  # identical node: no change


def test_on_change_is_called_only_for_real_changes() -> None:
    calls: list[int] = []
    tracker = StateTracker(on_change=lambda: calls.append(1))
    tracker.upsert_service(service("web", ("http", 80)))
    tracker.upsert_service(service("web", ("http", 80)))
    tracker.upsert_endpoint_slice(endpoint_slice("s1", "web", "10.244.1.2"))
    tracker.upsert_endpoint_slice(endpoint_slice("s1", "web", "10.244.1.2"))
    assert len(calls) == 2


def test_snapshot_is_reused_while_nothing_changes(tracker: StateTracker) -> None:
    tracker.upsert_service(service("web", ("http", 80)))
    assert tracker.snapshot() is tracker.snapshot()
