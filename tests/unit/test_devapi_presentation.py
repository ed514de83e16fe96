"""How the dev API server names and presents things: paths, Accept negotiation, tables, fields."""

from __future__ import annotations

import pytest

from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.fields import drop_unknown, unknown_fields
from kproxy.devcluster.apiserver.kinds.service_spec import SERVICE_FIELDS
from kproxy.devcluster.apiserver.negotiation import Representation, negotiate
from kproxy.devcluster.apiserver.objects import StoredObject
from kproxy.devcluster.apiserver.paths import parse_resource_path
from kproxy.devcluster.apiserver.resources import ENDPOINT_SLICES, NAMESPACES, NODES, SERVICES
from kproxy.devcluster.apiserver.tables import human_duration, table


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/services", (SERVICES, None, None, None, False)),
        ("/api/v1/namespaces/default/services", (SERVICES, "default", None, None, False)),
        ("/api/v1/namespaces/default/services/web", (SERVICES, "default", "web", None, False)),
        (
            "/api/v1/namespaces/default/services/web/status",
            (SERVICES, "default", "web", "status", False),
        ),
        ("/api/v1/nodes/n1", (NODES, None, "n1", None, False)),
        ("/api/v1/namespaces", (NAMESPACES, None, None, None, False)),
        ("/api/v1/namespaces/team", (NAMESPACES, None, "team", None, False)),
        ("/api/v1/namespaces/team/status", (NAMESPACES, None, "team", "status", False)),
        (
            "/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/b",
            (ENDPOINT_SLICES, "a", "b", None, False),
        ),
        ("/api/v1/watch/namespaces/a/services", (SERVICES, "a", None, None, True)),
    ],
)
def test_resource_paths(path: str, expected: tuple[object, ...]) -> None:
    route = parse_resource_path(path)
    assert route is not None
    assert (
        route.resource,
        route.namespace,
        route.name,
        route.subresource,
        route.legacy_watch,
    ) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/pods",
        "/api/v2/services",
        "/apis/discovery.k8s.io/v1beta1/endpointslices",
        "/api/v1/namespaces/a/nodes/n1",
        "/api/v1/namespaces/a/services/b/status/extra",
        "/api/v1//services",
        "/version",
    ],
)
def test_paths_that_name_no_resource(path: str) -> None:
    assert parse_resource_path(path) is None


def test_negotiation_follows_the_client_order() -> None:
    kubectl_get = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert negotiate(kubectl_get, allow_transforms=True).representation is Representation.TABLE
    assert negotiate(None, allow_transforms=True).representation is Representation.OBJECT
    protobuf_first = "application/vnd.kubernetes.protobuf, application/json"
    assert negotiate(protobuf_first, allow_transforms=True).representation is Representation.OBJECT
    metadata = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
    negotiated = negotiate(metadata, allow_transforms=True)
    assert negotiated.representation is Representation.METADATA
    with pytest.raises(ApiError) as caught:
        negotiate("application/vnd.kubernetes.protobuf", allow_transforms=True)
    assert caught.value.code == 406


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 7200, "3d2h"),
        (40 * 86400, "40d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_print_like_kubectl(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_service_table_cells() -> None:
    body = {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": "lb",
            "namespace": "default",
            "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.5",
            "selector": {"b": "2", "a": "1"},
            "ports": [
                {"port": 80, "nodePort": 30080, "protocol": "TCP"},
                {"port": 53, "protocol": "UDP"},
            ],
        },
        "status": {"loadBalancer": {}},
    }
    now = 1704067200.0 + 90
    document = table(
        SERVICES,
        [StoredObject.seal(body, 7)],
        now=now,
        meta_version="v1",
        include_object="None",
        list_metadata={"resourceVersion": "7"},
    )
    assert document["rows"] == [
        {
            "cells": [
                "lb",
                "LoadBalancer",
                "10.96.0.5",
                "<pending>",
                "80:30080/TCP,53/UDP",
                "90s",
                "a=1,b=2",
            ]
        }
    ]


def test_unknown_fields_are_found_and_dropped() -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "labels": {"anything": "goes"}, "bogus": 1},
        "spec": {"ports": [{"port": 1, "nope": 2}], "selector": {"free": "form"}},
        "extra": True,
    }
    assert unknown_fields(body, SERVICE_FIELDS) == [
        "metadata.bogus",
        "spec.ports[0].nope",
        "extra",
    ]
    drop_unknown(body, SERVICE_FIELDS)
    assert body == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "labels": {"anything": "goes"}},
        "spec": {"ports": [{"port": 1}], "selector": {"free": "form"}},
    }
