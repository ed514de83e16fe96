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
    RejectReason,
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


def rejected(parsed: Parsed[Any]) -> tuple[str, RejectReason]:
    """The field and reason code of the one rejection, asserting the slice is skipped whole."""
    assert parsed.value is None
    assert len(parsed.rejections) == 1 and parsed.rejections[0].whole_object
    return parsed.rejections[0].field, parsed.rejections[0].code


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
        pytest.param(None, "ports[1]", id="null-entry-is-an-all-ports-entry"),
    ],
)
def test_a_slice_port_kube_proxy_ignores_is_skipped_alone(bad_port: Any, field: str) -> None:
    ports = [{"name": "a", "port": 80}, bad_port, {"name": "c", "port": 82, "protocol": "SCTP"}]
    parsed = parse_endpoint_slice(endpoint_slice(ports=ports))
    assert parsed.value is not None
    assert parsed.value.ports == (
        EndpointSlicePort("a", 80, Protocol.TCP),
        EndpointSlicePort("c", 82, Protocol.SCTP),
    )
    assert len(parsed.value.endpoints) == 1
    assert fields(parsed) == [(field, False)]


@pytest.mark.parametrize(
    ("bad_port", "field", "code"),
    [
        pytest.param({"name": "b", "port": 65536}, "ports[1].port", RejectReason.INVALID_PORT,
                     id="port-out-of-range"),
        pytest.param({"name": "b", "port": -5}, "ports[1].port", RejectReason.INVALID_PORT,
                     id="port-negative"),
        pytest.param({"name": "b", "port": "80"}, "ports[1].port", RejectReason.INVALID_PORT,
                     id="port-string"),
        pytest.param({"name": "b", "port": 81, "protocol": "HTTP"}, "ports[1].protocol",
                     RejectReason.UNSUPPORTED_VALUE, id="unknown-protocol"),
        pytest.param({"name": ["b"], "port": 81}, "ports[1].name", RejectReason.WRONG_TYPE,
                     id="bad-name"),
        pytest.param({"name": "10.0.0.0/8", "port": 81}, "ports[1].name",
                     RejectReason.INVALID_NAME, id="name-not-a-dns-label"),
        pytest.param({"name": "b\x00", "port": 81}, "ports[1].name", RejectReason.INVALID_NAME,
                     id="name-with-nul"),
        pytest.param({"name": "a", "port": 81}, "ports[1].name", RejectReason.DUPLICATE,
                     id="duplicate-name"),
        pytest.param(81, "ports[1]", RejectReason.WRONG_TYPE, id="not-an-object"),
    ],
)
def test_a_bad_slice_port_skips_the_whole_slice(
    bad_port: Any, field: str, code: RejectReason
) -> None:
    ports = [{"name": "a", "port": 80}, bad_port, {"name": "c", "port": 82, "protocol": "SCTP"}]
    assert rejected(parse_endpoint_slice(endpoint_slice(ports=ports))) == (field, code)


def test_slice_port_names_are_dns_labels_of_up_to_63_characters() -> None:
    ports = [{"name": "p" * 63, "port": 80}, {"name": "", "port": 81}]
    assert [p.name for p in ok(parse_endpoint_slice(endpoint_slice(ports=ports))).ports] == [
        "p" * 63, ""
    ]


def test_too_many_ports_or_endpoints_skip_the_slice() -> None:
    ports = [{"name": f"p{i}", "port": 1 + i} for i in range(101)]
    assert rejected(parse_endpoint_slice(endpoint_slice(ports=ports))) == (
        "ports", RejectReason.TOO_MANY
    )
    endpoints = [{"addresses": [f"10.0.{i // 256}.{i % 256}"]} for i in range(1001)]
    assert rejected(parse_endpoint_slice(endpoint_slice(endpoints=endpoints))) == (
        "endpoints", RejectReason.TOO_MANY
    )
    assert len(ok(parse_endpoint_slice(endpoint_slice(endpoints=endpoints[:1000]))).endpoints) \
        == 1000


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
    ("bad_endpoint", "field", "code"),
    [
        pytest.param({"addresses": []}, "endpoints[1].addresses", RejectReason.MISSING,
                     id="no-address"),
        pytest.param({}, "endpoints[1].addresses", RejectReason.MISSING, id="addresses-missing"),
        pytest.param({"addresses": "10.0.0.2"}, "endpoints[1].addresses",
                     RejectReason.WRONG_TYPE, id="not-a-list"),
        pytest.param({"addresses": ["10.0.0.2"] * 101}, "endpoints[1].addresses",
                     RejectReason.TOO_MANY, id="more-than-100-addresses"),
        pytest.param({"addresses": ["2001:db8::2"]}, "endpoints[1].addresses[0]",
                     RejectReason.INVALID_IP, id="wrong-family-for-slice"),
        pytest.param({"addresses": ["10.0.0.256"]}, "endpoints[1].addresses[0]",
                     RejectReason.INVALID_IP, id="not-an-ip"),
        pytest.param({"addresses": ["10.0.0.02"]}, "endpoints[1].addresses[0]",
                     RejectReason.INVALID_IP, id="leading-zero"),
        pytest.param({"addresses": ["10.0.0.2", "bogus"]}, "endpoints[1].addresses[1]",
                     RejectReason.INVALID_IP, id="every-address-is-checked"),
        pytest.param({"addresses": ["127.0.0.1"]}, "endpoints[1].addresses[0]",
                     RejectReason.INVALID_IP, id="loopback"),
        pytest.param({"addresses": ["169.254.169.254"]}, "endpoints[1].addresses[0]",
                     RejectReason.INVALID_IP, id="link-local"),
        pytest.param({"addresses": ["0.0.0.0"]}, "endpoints[1].addresses[0]",
                     RejectReason.INVALID_IP, id="unspecified"),
        pytest.param({"addresses": ["10.0.0.2"], "conditions": {"ready": "false"}},
                     "endpoints[1].conditions.ready", RejectReason.WRONG_TYPE,
                     id="condition-not-boolean"),
        pytest.param({"addresses": ["10.0.0.2"], "conditions": {"terminating": 1}},
                     "endpoints[1].conditions.terminating", RejectReason.WRONG_TYPE,
                     id="condition-int"),
        pytest.param({"addresses": ["10.0.0.2"], "conditions": "Ready"},
                     "endpoints[1].conditions", RejectReason.WRONG_TYPE,
                     id="conditions-not-an-object"),
        pytest.param(["10.0.0.2"], "endpoints[1]", RejectReason.WRONG_TYPE,
                     id="endpoint-not-an-object"),
        pytest.param({"addresses": ["10.0.0.2"], "nodeName": 5}, "endpoints[1].nodeName",
                     RejectReason.WRONG_TYPE, id="node-name-not-a-string"),
        pytest.param({"addresses": ["10.0.0.2"], "nodeName": "Node_A"},
                     "endpoints[1].nodeName", RejectReason.INVALID_NAME, id="node-name-syntax"),
        pytest.param({"addresses": ["10.0.0.2"], "hostname": "a.b"}, "endpoints[1].hostname",
                     RejectReason.INVALID_NAME, id="hostname-is-a-label"),
        pytest.param({"addresses": ["10.0.0.2"], "hints": "zone-1"}, "endpoints[1].hints",
                     RejectReason.WRONG_TYPE, id="hints-not-an-object"),
        pytest.param({"addresses": ["10.0.0.2"], "hints": {"forZones": "zone-1"}},
                     "endpoints[1].hints.forZones", RejectReason.WRONG_TYPE,
                     id="zone-hints-not-a-list"),
        pytest.param({"addresses": ["10.0.0.2"], "hints": {"forZones": [{"nom": "zone-1"}]}},
                     "endpoints[1].hints.forZones[0].name", RejectReason.INVALID_NAME,
                     id="zone-hint-without-name"),
        pytest.param({"addresses": ["10.0.0.2"], "hints": {"forZones": [{"name": "z 1"}]}},
                     "endpoints[1].hints.forZones[0].name", RejectReason.INVALID_NAME,
                     id="zone-hint-not-a-label-value"),
        pytest.param({"addresses": ["10.0.0.2"],
                      "hints": {"forZones": [{"name": "z"}, {"name": "z"}]}},
                     "endpoints[1].hints.forZones[1].name", RejectReason.DUPLICATE,
                     id="zone-hint-twice"),
        pytest.param({"addresses": ["10.0.0.2"],
                      "hints": {"forZones": [{"name": f"z{i}"} for i in range(9)]}},
                     "endpoints[1].hints.forZones", RejectReason.TOO_MANY,
                     id="more-than-8-zone-hints"),
        pytest.param({"addresses": ["10.0.0.2"], "hints": {"forNodes": [{"name": 1}]}},
                     "endpoints[1].hints.forNodes[0].name", RejectReason.INVALID_NAME,
                     id="node-hint-not-a-name"),
    ],
)
def test_a_bad_endpoint_skips_the_whole_slice(
    bad_endpoint: Any, field: str, code: RejectReason
) -> None:
    raw = [{"addresses": ["10.0.0.1"]}, bad_endpoint, {"addresses": ["10.0.0.3"]}]
    assert rejected(parse_endpoint_slice(endpoint_slice(endpoints=raw))) == (field, code)


@pytest.mark.parametrize("zone", ["", "zone\n1", 5])
def test_a_zone_kproxy_cannot_use_is_dropped_but_the_endpoint_kept(zone: Any) -> None:
    # The API server does not check zones; kproxy ignores one it cannot use, as before.
    raw = [{"addresses": ["10.0.0.1"], "zone": zone}]
    parsed = parse_endpoint_slice(endpoint_slice(endpoints=raw))
    assert parsed.value is not None
    assert parsed.value.endpoints == (Endpoint("10.0.0.1", 0),)
    assert fields(parsed) == [("endpoints[0].zone", False)]


@pytest.mark.parametrize(
    ("labels", "field", "code"),
    [
        ({}, "metadata.labels[kubernetes.io/service-name]", RejectReason.MISSING),
        ({"kubernetes.io/service-name": ""}, "metadata.labels[kubernetes.io/service-name]",
         RejectReason.MISSING),
        ({"kubernetes.io/service-name": "web\x00"},
         "metadata.labels[kubernetes.io/service-name]", RejectReason.INVALID_LABEL),
        ({"kubernetes.io/service-name": "web", "bad key": "x"}, "metadata.labels['bad key']",
         RejectReason.INVALID_LABEL),
    ],
)
def test_bad_labels_skip_the_whole_slice(
    labels: dict[str, Any], field: str, code: RejectReason
) -> None:
    assert rejected(parse_endpoint_slice(endpoint_slice(labels=labels))) == (field, code)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [({"name": "Web-abc"}, "metadata.name"), ({"name": "web_abc"}, "metadata.name"),
     ({"name": "web\nabc"}, "metadata.name"), ({"namespace": "a.b"}, "metadata.namespace")],
)
def test_slice_names_are_subdomains_and_namespaces_labels(
    metadata: dict[str, Any], field: str
) -> None:
    obj = endpoint_slice()
    obj["metadata"].update(metadata)
    assert rejected(parse_endpoint_slice(obj)) == (field, RejectReason.INVALID_NAME)
    obj["metadata"].update({"name": "web.abc-1", "namespace": "default"})
    assert ok(parse_endpoint_slice(obj)).name == "web.abc-1"


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
        (Rejection("EndpointSlice", "default", "", "metadata.name", "missing", True,
                   RejectReason.MISSING),),
    )
