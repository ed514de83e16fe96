"""merge_endpoint_slices: the EndpointSliceCache semantics of kube-proxy, deterministically."""

from __future__ import annotations

import itertools

import pytest

from kproxy.model.endpoints import merge_endpoint_slices
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Protocol,
    ServicePortName,
)

HTTP = EndpointSlicePort("http", 8080, Protocol.TCP)
HTTP_NAME = ServicePortName("default", "web", "http", Protocol.TCP)


def slice_of(
    name: str,
    *endpoints: Endpoint,
    ports: tuple[EndpointSlicePort, ...] = (HTTP,),
    family: IPFamily = IPFamily.IPV4,
) -> EndpointSliceInfo:
    return EndpointSliceInfo("default", name, "web", family, ports, endpoints)


def test_each_slice_port_is_a_service_port_and_gives_the_endpoint_port() -> None:
    dns_udp = EndpointSlicePort("dns", 53, Protocol.UDP)
    dns_tcp = EndpointSlicePort("dns", 5353, Protocol.TCP)
    merged = merge_endpoint_slices(
        [slice_of("a", Endpoint("10.0.0.1", 0, node_name="n1"), ports=(dns_udp, dns_tcp))]
    )
    assert merged == {
        ServicePortName("default", "web", "dns", Protocol.UDP): (
            Endpoint("10.0.0.1", 53, node_name="n1"),
        ),
        ServicePortName("default", "web", "dns", Protocol.TCP): (
            Endpoint("10.0.0.1", 5353, node_name="n1"),
        ),
    }


def test_endpoints_of_all_slices_are_merged_and_sorted_by_ip_port_string() -> None:
    merged = merge_endpoint_slices(
        [
            slice_of("b", Endpoint("10.0.0.2", 0), Endpoint("10.0.0.10", 0)),
            slice_of("a", Endpoint("10.0.0.1", 0)),
        ]
    )
    # kube-proxy sorts by Endpoint.String(): "10.0.0.10:8080" < "10.0.0.1:8080".
    assert [e.address for e in merged[HTTP_NAME]] == [
        "10.0.0.10:8080",
        "10.0.0.1:8080",
        "10.0.0.2:8080",
    ]


def test_ipv6_endpoints_are_keyed_and_sorted_with_brackets() -> None:
    merged = merge_endpoint_slices(
        [slice_of("a", Endpoint("2001:db8::2", 0), Endpoint("2001:db8::1", 0),
                  family=IPFamily.IPV6)]
    )
    assert [e.address for e in merged[HTTP_NAME]] == ["[2001:db8::1]:8080", "[2001:db8::2]:8080"]


def test_two_slice_ports_with_one_name_both_contribute_as_in_kube_proxy() -> None:
    other = EndpointSlicePort("http", 8081, Protocol.TCP)
    merged = merge_endpoint_slices([slice_of("a", Endpoint("10.0.0.1", 0), ports=(HTTP, other))])
    assert [e.address for e in merged[HTTP_NAME]] == ["10.0.0.1:8080", "10.0.0.1:8081"]


def test_service_ports_without_endpoints_are_left_out() -> None:
    assert merge_endpoint_slices([slice_of("a")]) == {}
    assert merge_endpoint_slices([slice_of("a", Endpoint("10.0.0.1", 0), ports=())]) == {}
    assert merge_endpoint_slices([]) == {}


@pytest.mark.parametrize(
    ("copies", "winner"),
    [
        pytest.param(
            [Endpoint("10.0.0.1", 0, ready=False, serving=True, terminating=True, node_name="old"),
             Endpoint("10.0.0.1", 0, ready=True, node_name="new")],
            Endpoint("10.0.0.1", 8080, ready=True, node_name="new"),
            id="non-terminating-beats-terminating-as-in-add-endpoints",
        ),
        pytest.param(
            [Endpoint("10.0.0.1", 0, ready=False, serving=False, terminating=False),
             Endpoint("10.0.0.1", 0, ready=True, serving=True, terminating=True)],
            Endpoint("10.0.0.1", 8080, ready=False, serving=False, terminating=False),
            id="even-an-unready-non-terminating-copy-wins",
        ),
        pytest.param(
            [Endpoint("10.0.0.1", 0, ready=False), Endpoint("10.0.0.1", 0, ready=True)],
            Endpoint("10.0.0.1", 8080, ready=True),
            id="then-ready-beats-not-ready",
        ),
        pytest.param(
            [Endpoint("10.0.0.1", 0, ready=False, serving=False, terminating=True),
             Endpoint("10.0.0.1", 0, ready=False, serving=True, terminating=True)],
            Endpoint("10.0.0.1", 8080, ready=False, serving=True, terminating=True),
            id="then-serving-beats-not-serving",
        ),
    ],
)
def test_duplicate_ip_port_keeps_one_copy_whatever_the_slice_order(
    copies: list[Endpoint], winner: Endpoint
) -> None:
    for order in itertools.permutations(copies):
        slices = [slice_of(f"s{i}", copy) for i, copy in enumerate(order)]
        assert merge_endpoint_slices(slices) == {HTTP_NAME: (winner,)}


def test_duplicates_with_equal_conditions_resolve_the_same_way_in_any_order() -> None:
    copies = [
        Endpoint("10.0.0.1", 0, node_name="node-b", zone="z1"),
        Endpoint("10.0.0.1", 0, node_name="node-a", zone="z2", zone_hints=frozenset({"z2"})),
        Endpoint("10.0.0.1", 0),
    ]
    results = {
        merge_endpoint_slices([slice_of(f"s{i}", c) for i, c in enumerate(order)])[HTTP_NAME]
        for order in itertools.permutations(copies)
    }
    assert len(results) == 1


def test_slices_of_one_service_are_merged_into_the_keys_of_that_service() -> None:
    merged = merge_endpoint_slices(
        [slice_of("a", Endpoint("10.0.0.1", 0)), slice_of("b", Endpoint("10.0.0.2", 0))]
    )
    assert list(merged) == [HTTP_NAME]
    assert HTTP_NAME.service.name == "web"
