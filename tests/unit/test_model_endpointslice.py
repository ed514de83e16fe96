"""parse_endpoint_slice: discovery.k8s.io/v1 EndpointSlice -> EndpointSliceInfo."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kproxy.model.endpointslice import parse_endpoint_slice
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Parsed,
    Protocol,
    Rejection,
)

TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"


def endpoint_slice(
    *,
    labels: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    address_type: Any = "IPv4",
    ports: Any = None,
    endpoints: Any = None,
) -> dict[str, Any]:
    """A valid slice default/web-abc of service web, fields replaced where given."""
    obj: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "default",
            "name": "web-abc",
            "labels": {"kubernetes.io/service-name": "web"} if labels is None else labels,
        },
        "addressType": address_type,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}] if ports is None else ports,
        "endpoints": (
            [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}]
            if endpoints is None
            else endpoints
        ),
    }
    if annotations is not None:
        obj["metadata"]["annotations"] = annotations
    return obj


def ok(parsed: Parsed[EndpointSliceInfo]) -> EndpointSliceInfo:
    assert parsed.rejections == ()
    assert parsed.value is not None
    return parsed.value


def fields(parsed: Parsed[Any]) -> list[tuple[str, bool]]:
    return [(r.field, r.whole_object) for r in parsed.rejections]


def test_slice_record_names_its_service_family_ports_and_endpoints() -> None:
    info = ok(parse_endpoint_slice(endpoint_slice()))
    assert info == EndpointSliceInfo(
        namespace="default",
        name="web-abc",
        service_name="web",
        address_type=IPFamily.IPV4,
        ports=(EndpointSlicePort("http", 8080, Protocol.TCP),),
        endpoints=(Endpoint("10.0.0.1", 0),),
    )


def test_missing_service_name_label_skips_the_slice_as_endpoint_slice_cache_keys_does() -> None:
    for labels in ({}, {"kubernetes.io/service-name": ""}, {"kubernetes.io/service-name": 5}):
        parsed = parse_endpoint_slice(endpoint_slice(labels=labels))
        assert parsed.value is None
        assert fields(parsed) == [("metadata.labels[kubernetes.io/service-name]", True)]
        assert parsed.rejections[0].namespace == "default"
        assert parsed.rejections[0].name == "web-abc"


def test_fqdn_slices_are_ignored_without_rejection_as_unsupported_address_type() -> None:
    assert parse_endpoint_slice(endpoint_slice(address_type="FQDN")) == Parsed(None)


@pytest.mark.parametrize("address_type", [None, "ipv4", "IPv5", 4, ["IPv4"]])
def test_unknown_address_type_skips_the_slice(address_type: Any) -> None:
    parsed = parse_endpoint_slice(endpoint_slice(address_type=address_type))
    assert parsed.value is None
    assert fields(parsed) == [("addressType", True)]


@pytest.mark.parametrize(
    ("labels", "proxy_name", "served"),
    [
        ({"kubernetes.io/service-name": "web"}, "", True),
        ({"kubernetes.io/service-name": "web", "service.kubernetes.io/headless": ""}, "", False),
        ({"kubernetes.io/service-name": "web",
          "service.kubernetes.io/service-proxy-name": "other"}, "", False),
        ({"kubernetes.io/service-name": "web",
          "service.kubernetes.io/service-proxy-name": "kproxy"}, "kproxy", True),
        ({"kubernetes.io/service-name": "web"}, "kproxy", False),
        ({"service.kubernetes.io/headless": ""}, "", False),  # filtered before the name check
    ],
)
def test_slices_follow_the_same_label_selector_as_services(
    labels: dict[str, str], proxy_name: str, served: bool
) -> None:
    parsed = parse_endpoint_slice(endpoint_slice(labels=labels), proxy_name=proxy_name)
    assert (parsed.value is not None) is served
    assert parsed.rejections == ()


# --- ports ------------------------------------------------------------------------------


def test_port_name_and_protocol_default_as_the_api_server_defaults_them() -> None:
    info = ok(parse_endpoint_slice(endpoint_slice(ports=[{"port": 8080}])))
    assert info.ports == (EndpointSlicePort("", 8080, Protocol.TCP),)


@pytest.mark.parametrize(
    ("bad_port", "field"),
    [
        pytest.param({"name": "b"}, "ports[1].port", id="nil-port-all-ports-unsupported"),
        pytest.param({"name": "b", "port": None}, "ports[1].port", id="explicit-null-port"),
        pytest.param({"name": "b", "port": 0}, "ports[1].port", id="port-zero-skipped"),
        pytest.param({"name": "b", "port": 65536}, "ports[1].port", id="port-out-of-range"),
        pytest.param({"name": "b", "port": "80"}, "ports[1].port", id="port-string"),
        pytest.param({"name": "b", "port": 81, "protocol": "HTTP"}, "ports[1].protocol",
                     id="unknown-protocol"),
        pytest.param({"name": ["b"], "port": 81}, "ports[1].name", id="bad-name"),
        pytest.param(81, "ports[1]", id="not-an-object"),
    ],
)
def test_a_bad_slice_port_is_skipped_alone(bad_port: Any, field: str) -> None:
    ports = [{"name": "a", "port": 80}, bad_port, {"name": "c", "port": 82, "protocol": "SCTP"}]
    parsed = parse_endpoint_slice(endpoint_slice(ports=ports))
    assert parsed.value is not None
    assert parsed.value.ports == (
        EndpointSlicePort("a", 80, Protocol.TCP),
        EndpointSlicePort("c", 82, Protocol.SCTP),
    )
    assert len(parsed.value.endpoints) == 1
    assert fields(parsed) == [(field, False)]


# --- endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        pytest.param(None, (True, True, False), id="no-conditions"),
        pytest.param({}, (True, True, False), id="all-nil-ready-true-serving-true"),
        pytest.param({"ready": False}, (False, True, False),
                     id="serving-nil-is-true-even-if-not-ready-as-kube-proxy"),
        pytest.param({"ready": False, "serving": True, "terminating": True}, (False, True, True),
                     id="terminating-but-serving"),
        pytest.param({"ready": False, "serving": False, "terminating": True},
                     (False, False, True), id="terminating-not-serving"),
        pytest.param({"ready": None, "serving": None, "terminating": None}, (True, True, False),
                     id="explicit-nulls-are-nil"),
    ],
)
def test_endpoint_conditions_default_as_endpoint_slice_cache(
    conditions: dict[str, Any] | None, expected: tuple[bool, bool, bool]
) -> None:
    raw: dict[str, Any] = {"addresses": ["10.0.0.1"]}
    if conditions is not None:
        raw["conditions"] = conditions
    endpoint = ok(parse_endpoint_slice(endpoint_slice(endpoints=[raw]))).endpoints[0]
    assert (endpoint.ready, endpoint.serving, endpoint.terminating) == expected


def test_only_the_first_address_of_an_endpoint_is_used() -> None:
    raw = [{"addresses": ["10.0.0.1", "10.0.0.2"]}]
    info = ok(parse_endpoint_slice(endpoint_slice(endpoints=raw)))
    assert [e.ip for e in info.endpoints] == ["10.0.0.1"]


def test_ipv6_slice_addresses_are_normalised() -> None:
    raw = [{"addresses": ["2001:DB8:0::7"]}]
    info = ok(parse_endpoint_slice(endpoint_slice(address_type="IPv6", endpoints=raw)))
    assert info.address_type is IPFamily.IPV6
    assert [e.ip for e in info.endpoints] == ["2001:db8::7"]


def test_locality_and_hints_are_kept() -> None:
    raw = [
        {
            "addresses": ["10.0.0.1"],
            "nodeName": "node-a",
            "zone": "zone-1",
            "hints": {"forZones": [{"name": "zone-1"}, {"name": "zone-2"}],
                      "forNodes": [{"name": "node-a"}]},
        },
        {"addresses": ["10.0.0.2"], "hints": {"forZones": []}},  # empty list: no hints
    ]
    first, second = ok(parse_endpoint_slice(endpoint_slice(endpoints=raw))).endpoints
    assert first == Endpoint(
        "10.0.0.1", 0, node_name="node-a", zone="zone-1",
        zone_hints=frozenset({"zone-1", "zone-2"}), node_hints=frozenset({"node-a"}),
    )
    assert second.zone_hints is None and second.node_hints is None


@pytest.mark.parametrize(
    ("bad_endpoint", "field"),
    [
        pytest.param({"addresses": []}, "endpoints[1].addresses", id="no-address"),
        pytest.param({}, "endpoints[1].addresses", id="addresses-missing"),
        pytest.param({"addresses": "10.0.0.2"}, "endpoints[1].addresses", id="not-a-list"),
        pytest.param({"addresses": ["2001:db8::2"]}, "endpoints[1].addresses[0]",
                     id="wrong-family-for-slice"),
        pytest.param({"addresses": ["10.0.0.256"]}, "endpoints[1].addresses[0]",
                     id="not-an-ip"),
        pytest.param({"addresses": ["10.0.0.02"]}, "endpoints[1].addresses[0]",
                     id="leading-zero"),
        pytest.param({"addresses": ["10.0.0.2"], "conditions": {"ready": "false"}},
                     "endpoints[1].conditions.ready", id="condition-not-boolean"),
        pytest.param({"addresses": ["10.0.0.2"], "conditions": {"terminating": 1}},
                     "endpoints[1].conditions.terminating", id="condition-int"),
        pytest.param({"addresses": ["10.0.0.2"], "conditions": "Ready"},
                     "endpoints[1].conditions", id="conditions-not-an-object"),
        pytest.param(["10.0.0.2"], "endpoints[1]", id="endpoint-not-an-object"),
    ],
)
def test_a_bad_endpoint_is_skipped_alone(bad_endpoint: Any, field: str) -> None:
    raw = [{"addresses": ["10.0.0.1"]}, bad_endpoint, {"addresses": ["10.0.0.3"]}]
    parsed = parse_endpoint_slice(endpoint_slice(endpoints=raw))
    assert parsed.value is not None
    assert [e.ip for e in parsed.value.endpoints] == ["10.0.0.1", "10.0.0.3"]
    assert fields(parsed) == [(field, False)]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"nodeName": 5}, "endpoints[0].nodeName"),
        ({"zone": ""}, "endpoints[0].zone"),
        ({"hints": "zone-1"}, "endpoints[0].hints"),
        ({"hints": {"forZones": "zone-1"}}, "endpoints[0].hints.forZones"),
        ({"hints": {"forZones": [{"nom": "zone-1"}]}}, "endpoints[0].hints.forZones[0]"),
        ({"hints": {"forNodes": [{"name": 1}]}}, "endpoints[0].hints.forNodes[0]"),
    ],
)
def test_bad_locality_fields_are_dropped_but_the_endpoint_kept(
    extra: dict[str, Any], field: str
) -> None:
    raw = [{"addresses": ["10.0.0.1"], **extra}]
    parsed = parse_endpoint_slice(endpoint_slice(endpoints=raw))
    assert parsed.value is not None
    assert parsed.value.endpoints == (Endpoint("10.0.0.1", 0),)
    assert fields(parsed) == [(field, False)]


def test_ports_or_endpoints_of_the_wrong_shape_skip_the_slice() -> None:
    for obj, field in (
        (endpoint_slice(ports={"port": 80}), "ports"),
        (endpoint_slice(endpoints={"addresses": ["10.0.0.1"]}), "endpoints"),
    ):
        parsed = parse_endpoint_slice(obj)
        assert parsed.value is None
        assert fields(parsed) == [(field, True)]


def test_null_ports_and_endpoints_mean_none() -> None:
    obj = endpoint_slice()
    obj["ports"] = None
    obj["endpoints"] = None
    info = ok(parse_endpoint_slice(obj))
    assert info.ports == () and info.endpoints == ()


# --- last-change-trigger-time -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2025-01-02T03:04:05.5Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
         + 0.5),
        ("2025-01-02T03:04:05.123456789+01:00",
         datetime(2025, 1, 2, 2, 4, 5, 123456, tzinfo=UTC).timestamp()),
    ],
)
def test_trigger_time_is_parsed_as_rfc3339_nano(value: str, expected: float) -> None:
    info = ok(parse_endpoint_slice(endpoint_slice(annotations={TRIGGER: value})))
    assert info.last_change_trigger_time == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2025-01-02", "2025-01-02T03:04:05", "2025-13-02T03:04:05Z",
     "2025-01-02 03:04:05Z", 1735787045, ""],
)
def test_bad_trigger_time_is_ignored_with_a_rejection_as_kube_proxy_ignores_it(
    value: Any,
) -> None:
    parsed = parse_endpoint_slice(endpoint_slice(annotations={TRIGGER: value}))
    assert parsed.value is not None
    assert parsed.value.last_change_trigger_time is None
    assert len(parsed.value.endpoints) == 1
    assert fields(parsed) == [(f"metadata.annotations[{TRIGGER}]", False)]


def test_whole_object_rejections_name_kind_namespace_and_name() -> None:
    parsed = parse_endpoint_slice({"metadata": {"namespace": "default"}})
    assert parsed == Parsed(
        None,
        (Rejection("EndpointSlice", "default", "", "metadata.name", "missing", True),),
    )
