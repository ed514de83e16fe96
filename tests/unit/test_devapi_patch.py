"""PATCH semantics of the dev API server: merge patch, JSON patch and strategic merge patch."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.devcluster.apiserver.kinds.endpointslices import EndpointSliceRules
from kproxy.devcluster.apiserver.patch import (
    PatchError,
    PatchSchema,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from kproxy.devcluster.apiserver.resources import SERVICES
from kproxy.devcluster.apiserver.store import Store

SERVICE: dict[str, Any] = {
    "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a"]},
    "spec": {
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
        ],
        "externalIPs": ["192.0.2.1", "192.0.2.2"],
        "selector": {"app": "web"},
    },
}


def service_schema() -> PatchSchema:
    return Store().rules(SERVICES).patch_schema


def test_merge_patch_merges_objects_and_deletes_nulls() -> None:
    patched = merge_patch(SERVICE, {"metadata": {"labels": {"tier": None, "new": "x"}}})
    assert patched["metadata"]["labels"] == {"app": "web", "new": "x"}
    assert patched["spec"] == SERVICE["spec"]


def test_merge_patch_replaces_lists_whole() -> None:
    patched = merge_patch(SERVICE, {"spec": {"ports": [{"port": 81}]}})
    assert patched["spec"]["ports"] == [{"port": 81}]


def test_merge_patch_does_not_mutate_its_input() -> None:
    before = repr(SERVICE)
    merge_patch(SERVICE, {"spec": {"selector": {"app": None}}})
    assert repr(SERVICE) == before


def test_strategic_patch_merges_service_ports_by_port() -> None:
    patch = {"spec": {"ports": [{"port": 443, "targetPort": 9443}, {"port": 8080, "name": "alt"}]}}
    patched = strategic_merge_patch(SERVICE, patch, service_schema())
    assert patched["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        {"name": "https", "port": 443, "targetPort": 9443, "protocol": "TCP"},
        {"port": 8080, "name": "alt"},
    ]


def test_strategic_patch_deletes_a_port_by_key() -> None:
    patch = {"spec": {"ports": [{"port": 80, "$patch": "delete"}]}}
    patched = strategic_merge_patch(SERVICE, patch, service_schema())
    assert [p["port"] for p in patched["spec"]["ports"]] == [443]


def test_strategic_patch_replace_directive_on_a_list() -> None:
    patch = {"spec": {"ports": [{"$patch": "replace"}, {"port": 53, "protocol": "UDP"}]}}
    patched = strategic_merge_patch(SERVICE, patch, service_schema())
    assert patched["spec"]["ports"] == [{"port": 53, "protocol": "UDP"}]


def test_strategic_patch_set_element_order_as_kubectl_sends_it() -> None:
    patch = {
        "spec": {
            "$setElementOrder/ports": [{"port": 443}, {"port": 80}],
            "ports": [{"port": 443, "targetPort": 1443}],
        }
    }
    patched = strategic_merge_patch(SERVICE, patch, service_schema())
    assert [(p["port"], p["targetPort"]) for p in patched["spec"]["ports"]] == [
        (443, 1443),
        (80, 8080),
    ]


def test_strategic_patch_replaces_atomic_lists() -> None:
    patched = strategic_merge_patch(
        SERVICE, {"spec": {"externalIPs": ["192.0.2.9"]}}, service_schema()
    )
    assert patched["spec"]["externalIPs"] == ["192.0.2.9"]


def test_strategic_patch_merges_primitive_sets_and_deletes_from_them() -> None:
    schema = service_schema()
    added = strategic_merge_patch(SERVICE, {"metadata": {"finalizers": ["b", "a"]}}, schema)
    assert added["metadata"]["finalizers"] == ["a", "b"]
    removed = strategic_merge_patch(
        added, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, schema
    )
    assert removed["metadata"]["finalizers"] == ["b"]


def test_strategic_patch_retain_keys_and_map_replace() -> None:
    schema = service_schema()
    retained = strategic_merge_patch(
        SERVICE, {"spec": {"$retainKeys": ["ports", "type"], "type": "NodePort"}}, schema
    )
    assert set(retained["spec"]) == {"ports", "type"}
    replaced = strategic_merge_patch(
        SERVICE, {"metadata": {"labels": {"$patch": "replace", "only": "this"}}}, schema
    )
    assert replaced["metadata"]["labels"] == {"only": "this"}


def test_strategic_patch_keeps_endpoint_slice_lists_atomic() -> None:
    slice_body = {"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]}
    patched = strategic_merge_patch(
        slice_body,
        {"endpoints": [{"addresses": ["10.0.0.3"]}]},
        EndpointSliceRules().patch_schema,
    )
    assert patched["endpoints"] == [{"addresses": ["10.0.0.3"]}]


def test_strategic_patch_element_without_merge_key_is_an_error() -> None:
    with pytest.raises(PatchError):
        strategic_merge_patch(SERVICE, {"spec": {"ports": [{"name": "x"}]}}, service_schema())


def test_json_patch_operations() -> None:
    document = {"a": {"b": [1, 2, 3]}, "c": "x"}
    patched = json_patch(
        document,
        [
            {"op": "add", "path": "/a/b/-", "value": 4},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e~1f"},
            {"op": "test", "path": "/e~1f", "value": "y"},
        ],
    )
    assert patched == {"a": {"b": [2, 3, 4]}, "c": "y", "e/f": "y"}
    assert document == {"a": {"b": [1, 2, 3]}, "c": "x"}


def test_json_patch_failed_test_is_unprocessable() -> None:
    with pytest.raises(PatchError) as caught:
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    assert caught.value.code == 422
    with pytest.raises(PatchError):
        json_patch({"a": 1}, [{"op": "remove", "path": "/missing"}])
