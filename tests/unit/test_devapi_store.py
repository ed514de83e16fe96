"""The dev API server's store: versions, writes, optimistic concurrency, lists and history."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.clock import FakeClock
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.history import EventType
from kproxy.devcluster.apiserver.resources import ENDPOINT_SLICES, NAMESPACES, NODES, SERVICES
from kproxy.devcluster.apiserver.selectors import parse_field_selector, parse_label_selector
from kproxy.devcluster.apiserver.store import Store, make_filter


def service(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"ports": [{"port": 80}]},
    }


def endpoint_slice(name: str, address: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address]}],
    }


def test_default_namespaces_exist_from_the_start() -> None:
    store = Store()
    assert [ns.name for ns in store.objects(NAMESPACES)] == ["default", "kube-system"]
    assert store.get(NAMESPACES, "", "default").labels == {"kubernetes.io/metadata.name": "default"}


def test_one_resource_version_counter_across_all_kinds() -> None:
    store = Store()
    start = store.resource_version
    a = store.create(SERVICES, service("a"))
    b = store.create(ENDPOINT_SLICES, endpoint_slice("a-1"))
    c = store.create(NODES, {"metadata": {"name": "node-1"}})
    assert [a.resource_version, b.resource_version, c.resource_version] == [
        start + 1,
        start + 2,
        start + 3,
    ]
    assert a.metadata["resourceVersion"] == str(start + 1)
    assert store.resource_version == start + 3


def test_create_sets_system_metadata() -> None:
    store = Store(clock=FakeClock(wall_offset=1_700_000_000.0 - 1000.0))
    created = store.create(SERVICES, service("web"))
    metadata = created.metadata
    assert metadata["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert metadata["generation"] == 1
    assert len(metadata["uid"]) == 36
    assert (
        "namespace"
        not in store.create(NODES, {"metadata": {"name": "n", "namespace": "x"}}).metadata
    )


def test_generate_name() -> None:
    created = Store().create(
        SERVICES, {"metadata": {"generateName": "web-"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert created.name.startswith("web-")
    assert len(created.name) == len("web-") + 5


def test_create_in_a_missing_namespace_is_not_found() -> None:
    with pytest.raises(ApiError) as caught:
        Store().create(SERVICES, service("web", namespace="nowhere"))
    assert caught.value.code == 404
    assert caught.value.message == 'namespaces "nowhere" not found'
    assert caught.value.details == {"name": "nowhere", "kind": "namespaces"}


def test_create_twice_is_already_exists() -> None:
    store = Store()
    store.create(SERVICES, service("web"))
    with pytest.raises(ApiError) as caught:
        store.create(SERVICES, service("web"))
    assert (caught.value.code, caught.value.reason) == (409, "AlreadyExists")
    assert caught.value.message == 'services "web" already exists'


def test_create_with_resource_version_is_a_bad_request() -> None:
    body = service("web")
    body["metadata"]["resourceVersion"] = "5"
    with pytest.raises(ApiError) as caught:
        Store().create(SERVICES, body)
    assert caught.value.code == 400


def test_invalid_names_are_rejected() -> None:
    with pytest.raises(ApiError) as caught:
        Store().create(SERVICES, service("Web_1"))
    assert caught.value.code == 422
    assert caught.value.details is not None
    assert caught.value.details["causes"][0]["field"] == "metadata.name"


def test_update_with_stale_resource_version_is_a_conflict() -> None:
    store = Store()
    first = store.create(SERVICES, service("web"))
    body = first.mutable_copy()
    body["metadata"]["labels"] = {"v": "2"}
    second = store.update(SERVICES, body)
    assert second.resource_version > first.resource_version
    stale = first.mutable_copy()
    stale["metadata"]["labels"] = {"v": "3"}
    with pytest.raises(ApiError) as caught:
        store.update(SERVICES, stale)
    assert (caught.value.code, caught.value.reason) == (409, "Conflict")
    assert "the object has been modified" in caught.value.message
    unconditional = first.mutable_copy()
    del unconditional["metadata"]["resourceVersion"]
    unconditional["metadata"]["labels"] = {"v": "4"}
    assert store.update(SERVICES, unconditional).labels == {"v": "4"}


def test_update_of_missing_object_is_not_found() -> None:
    with pytest.raises(ApiError) as caught:
        Store().update(SERVICES, service("ghost"))
    assert caught.value.code == 404


def test_noop_update_keeps_the_resource_version() -> None:
    store = Store()
    created = store.create(SERVICES, service("web"))
    again = store.update(SERVICES, created.mutable_copy())
    assert again.resource_version == created.resource_version
    assert store.resource_version == created.resource_version


def test_generation_moves_with_spec_only() -> None:
    store = Store()
    created = store.create(SERVICES, service("web"))
    relabelled = created.mutable_copy()
    relabelled["metadata"]["labels"] = {"a": "b"}
    relabelled_stored = store.update(SERVICES, relabelled)
    assert relabelled_stored.metadata["generation"] == 1
    respecced = relabelled_stored.mutable_copy()
    respecced["spec"]["ports"][0]["targetPort"] = 8080
    assert store.update(SERVICES, respecced).metadata["generation"] == 2


def test_main_resource_updates_ignore_status_and_status_updates_ignore_spec() -> None:
    store = Store()
    created = store.create(
        SERVICES, {**service("lb"), "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
    )
    assert created.body["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.1"}]
    body = created.mutable_copy()
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}}
    body["metadata"]["labels"] = {"x": "y"}
    updated = store.update(SERVICES, body)
    assert updated.body["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.1"}]
    status_body = updated.mutable_copy()
    status_body["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}
    status_body["spec"]["ports"] = [{"port": 9999}]
    status_updated = store.update(SERVICES, status_body, status_only=True)
    assert status_updated.body["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.2"}]
    assert status_updated.body["spec"]["ports"][0]["port"] == 80


def test_dry_run_changes_nothing() -> None:
    store = Store()
    version = store.resource_version
    preview = store.create(SERVICES, service("web"), dry_run=True)
    assert preview.body["spec"]["clusterIP"]
    assert store.find(SERVICES, "default", "web") is None
    assert store.resource_version == version
    assert store.network.cluster_ips[0].used == 0


def test_delete_returns_the_object_at_the_deletion_version() -> None:
    store = Store()
    created = store.create(SERVICES, service("web"))
    deleted = store.delete(SERVICES, "default", "web")
    assert deleted.resource_version == created.resource_version + 1
    assert store.find(SERVICES, "default", "web") is None
    with pytest.raises(ApiError) as caught:
        store.delete(SERVICES, "default", "web")
    assert caught.value.code == 404


def test_delete_preconditions() -> None:
    store = Store()
    store.create(SERVICES, service("web"))
    with pytest.raises(ApiError) as caught:
        store.delete(SERVICES, "default", "web", uid="not-the-uid")
    assert caught.value.code == 409
    with pytest.raises(ApiError):
        store.delete(SERVICES, "default", "web", resource_version="1")


def test_deleting_a_namespace_deletes_its_objects() -> None:
    store = Store()
    store.create(NAMESPACES, {"metadata": {"name": "team"}})
    store.create(SERVICES, service("web", namespace="team"))
    store.create(SERVICES, service("web"))
    store.delete(NAMESPACES, "", "team")
    assert [s.key for s in store.objects(SERVICES)] == [("default", "web")]
    with pytest.raises(ApiError) as caught:
        store.delete(NAMESPACES, "", "default")
    assert caught.value.code == 403


def test_list_filters_by_namespace_labels_and_fields_in_key_order() -> None:
    store = Store()
    store.create(NAMESPACES, {"metadata": {"name": "a"}})
    store.create(SERVICES, service("z", app="web"))
    store.create(SERVICES, service("b", namespace="a", app="web"))
    store.create(SERVICES, service("c", namespace="a", app="db"))
    every = store.list_objects(SERVICES)
    assert [s.key for s in every.items] == [("a", "b"), ("a", "c"), ("default", "z")]
    assert every.resource_version == store.resource_version
    web = store.list_objects(SERVICES, labels=parse_label_selector("app=web"))
    assert [s.key for s in web.items] == [("a", "b"), ("default", "z")]
    in_a = store.list_objects(SERVICES, namespace="a")
    assert [s.name for s in in_a.items] == ["b", "c"]
    named = store.list_objects(
        SERVICES, fields=parse_field_selector("metadata.name=c", SERVICES.selectable_fields)
    )
    assert [s.key for s in named.items] == [("a", "c")]


def test_pagination_serves_a_consistent_snapshot() -> None:
    store = Store()
    for index in range(7):
        store.create(SERVICES, service(f"s{index}"))
    first = store.list_objects(SERVICES, limit=3)
    assert [s.name for s in first.items] == ["s0", "s1", "s2"]
    assert first.continue_token and first.remaining_item_count == 4
    # Changes after the first page do not show in later pages.
    store.delete(SERVICES, "default", "s4")
    store.create(SERVICES, service("s35"))
    changed = store.get(SERVICES, "default", "s5").mutable_copy()
    changed["metadata"]["labels"] = {"changed": "yes"}
    store.update(SERVICES, changed)
    second = store.list_objects(SERVICES, limit=3, continue_token=first.continue_token)
    assert [s.name for s in second.items] == ["s3", "s4", "s5"]
    assert second.items[2].labels == {}
    assert second.resource_version == first.resource_version
    third = store.list_objects(SERVICES, limit=3, continue_token=second.continue_token)
    assert [s.name for s in third.items] == ["s6"]
    assert third.continue_token is None


def test_continue_after_compaction_is_gone_with_a_fresh_token() -> None:
    store = Store()
    for index in range(4):
        store.create(SERVICES, service(f"s{index}"))
    first = store.list_objects(SERVICES, limit=2)
    store.create(SERVICES, service("s9"))
    store.compact()
    with pytest.raises(ApiError) as caught:
        store.list_objects(SERVICES, limit=2, continue_token=first.continue_token)
    assert (caught.value.code, caught.value.reason) == (410, "Expired")
    fresh = caught.value.metadata["continue"]
    rest = store.list_objects(SERVICES, limit=10, continue_token=fresh)
    assert [s.name for s in rest.items] == ["s2", "s3", "s9"]


def test_list_resource_version_semantics() -> None:
    store = Store()
    store.create(SERVICES, service("a"))
    middle = store.resource_version
    store.create(SERVICES, service("b"))
    assert len(store.list_objects(SERVICES, resource_version="0").items) == 2
    assert len(store.list_objects(SERVICES, resource_version=str(middle)).items) == 2
    exact = store.list_objects(
        SERVICES, resource_version=str(middle), resource_version_match="Exact"
    )
    assert [s.name for s in exact.items] == ["a"]
    assert exact.resource_version == middle
    with pytest.raises(ApiError) as caught:
        store.list_objects(SERVICES, resource_version=str(store.resource_version + 5))
    assert (caught.value.code, caught.value.reason) == (504, "Timeout")
    with pytest.raises(ApiError) as bad:
        store.list_objects(SERVICES, resource_version="abc")
    assert bad.value.code == 400


def test_bad_continue_token_is_a_bad_request() -> None:
    with pytest.raises(ApiError) as caught:
        Store().list_objects(SERVICES, continue_token="not-a-token")
    assert caught.value.code == 400


def test_watch_replays_history_and_reports_selector_transitions() -> None:
    store = Store()
    since = store.resource_version
    created = store.create(SERVICES, service("web", app="web"))
    moved = created.mutable_copy()
    moved["metadata"]["labels"] = {"app": "other"}
    moved_stored = store.update(SERVICES, moved)
    back = moved_stored.mutable_copy()
    back["metadata"]["labels"] = {"app": "web"}
    store.update(SERVICES, back)
    store.delete(SERVICES, "default", "web")
    start = store.watch(
        make_filter(SERVICES, None, parse_label_selector("app=web")), resource_version=str(since)
    )
    events = [line for line in start.initial_lines]
    kinds = [line.split(b'"')[3].decode() for line in events]
    assert kinds == [EventType.ADDED, EventType.DELETED, EventType.ADDED, EventType.DELETED]
    # The DELETED for "stopped matching" carries the old content at the new version.
    assert b'"app":"web"' in events[1]
    assert f'"resourceVersion":"{moved_stored.resource_version}"'.encode() in events[1]


def test_watch_from_a_compacted_version_is_gone() -> None:
    store = Store()
    old = store.resource_version
    store.create(SERVICES, service("web"))
    store.compact()
    with pytest.raises(ApiError) as caught:
        store.watch(make_filter(SERVICES, None), resource_version=str(old))
    assert (caught.value.code, caught.value.reason) == (410, "Expired")
    # The current version is still fine.
    store.watch(make_filter(SERVICES, None), resource_version=str(store.resource_version))


def test_history_size_bounds_watch_resumption() -> None:
    store = Store(history_size=3)
    old = store.resource_version
    for index in range(5):
        store.create(SERVICES, service(f"s{index}"))
    with pytest.raises(ApiError):
        store.watch(make_filter(SERVICES, None), resource_version=str(old))
    recent = store.watch(
        make_filter(SERVICES, None), resource_version=str(store.resource_version - 2)
    )
    assert len(recent.initial_lines) == 2


def test_watch_without_version_starts_with_current_objects() -> None:
    store = Store()
    store.create(SERVICES, service("a"))
    store.create(SERVICES, service("b", namespace="kube-system"))
    start = store.watch(make_filter(SERVICES, "default"), resource_version=None)
    assert len(start.initial_lines) == 1 and b'"name":"a"' in start.initial_lines[0]
    assert start.resource_version == store.resource_version


def test_slow_watcher_is_closed() -> None:
    store = Store()
    start = store.watch(make_filter(SERVICES, None), resource_version="", capacity=2)
    for index in range(3):
        store.create(SERVICES, service(f"s{index}"))
    assert start.watcher.closed is not None


def test_restore_continues_the_version_counter_and_allocations() -> None:
    store = Store()
    web = store.create(SERVICES, service("web"))
    saved = [obj.body for obj in store.objects(NAMESPACES) + store.objects(SERVICES)]
    fresh = Store()
    fresh.restore(store.resource_version, saved)
    assert fresh.resource_version == store.resource_version
    assert fresh.get(SERVICES, "default", "web").body == web.body
    clash = service("clash")
    clash["spec"]["clusterIP"] = web.body["spec"]["clusterIP"]
    with pytest.raises(ApiError) as caught:
        fresh.create(SERVICES, clash)
    assert caught.value.code == 422
    assert fresh.create(SERVICES, service("next")).resource_version == store.resource_version + 1
