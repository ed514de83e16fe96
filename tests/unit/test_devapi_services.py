"""Service defaults, validation and ClusterIP/NodePort allocation in the dev API server."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.resources import SERVICES
from kproxy.devcluster.apiserver.store import Store

DUAL_STACK = ("10.96.0.0/16", "fd00:10:96::/112")


def service(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80}])
    return {"metadata": {"name": name}, "spec": spec}


def invalid_fields(error: ApiError) -> list[str]:
    assert (error.code, error.reason) == (422, "Invalid"), error
    assert error.details is not None
    return [cause["field"] for cause in error.details["causes"]]


def create_error(store: Store, body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        store.create(SERVICES, body)
    return caught.value


def test_defaults_a_real_server_applies() -> None:
    spec = Store().create(SERVICES, service("web")).body["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["sessionAffinity"] == "None"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert spec["ipFamilies"] == ["IPv4"]
    assert spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert ipaddress.ip_address(spec["clusterIP"]) in ipaddress.ip_network("10.96.0.0/16")
    assert "externalTrafficPolicy" not in spec


def test_client_ip_affinity_gets_the_default_timeout() -> None:
    spec = Store().create(SERVICES, service("web", sessionAffinity="ClientIP")).body["spec"]
    assert spec["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


def test_requested_cluster_ip_taken_or_out_of_range() -> None:
    store = Store()
    store.create(SERVICES, service("a", clusterIP="10.96.0.10"))
    taken = create_error(store, service("b", clusterIP="10.96.0.10"))
    assert invalid_fields(taken) == ["spec.clusterIPs[0]"]
    assert taken.message == (
        'Service "b" is invalid: spec.clusterIPs[0]: Invalid value: "10.96.0.10": '
        "failed to allocate IP 10.96.0.10: provided IP is already allocated"
    )
    outside = create_error(store, service("c", clusterIP="192.168.0.1"))
    assert "is not in the valid range. The range of valid IPs is 10.96.0.0/16" in outside.message


def test_headless_and_external_name_services_get_no_address() -> None:
    store = Store()
    headless = store.create(SERVICES, service("h", clusterIP="None", selector={"a": "b"}))
    assert headless.body["spec"]["clusterIPs"] == ["None"]
    assert headless.body["spec"]["ipFamilyPolicy"] == "SingleStack"
    external = store.create(
        SERVICES, service("e", type="ExternalName", externalName="example.com", ports=[])
    ).body["spec"]
    assert "clusterIP" not in external and "ipFamilies" not in external
    assert store.network.cluster_ips[0].used == 0


def test_node_ports_are_allocated_shared_by_protocol_and_released() -> None:
    store = Store()
    created = store.create(
        SERVICES,
        service(
            "dns",
            type="NodePort",
            ports=[
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153},
            ],
        ),
    )
    ports = created.body["spec"]["ports"]
    assert ports[0]["nodePort"] == ports[1]["nodePort"] != ports[2]["nodePort"]
    assert all(30000 <= p["nodePort"] <= 32767 for p in ports)
    assert created.body["spec"]["externalTrafficPolicy"] == "Cluster"
    store.delete(SERVICES, "default", "dns")
    again = service("again", type="NodePort", ports=[{"port": 1, "nodePort": ports[0]["nodePort"]}])
    assert (
        store.create(SERVICES, again).body["spec"]["ports"][0]["nodePort"] == ports[0]["nodePort"]
    )


def test_taken_node_port_is_invalid_and_nothing_leaks() -> None:
    store = Store()
    store.create(SERVICES, service("a", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    error = create_error(
        store, service("b", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    )
    assert invalid_fields(error) == ["spec.ports[0].nodePort"]
    assert "provided port is already allocated" in error.message
    assert store.network.cluster_ips[0].used == 1  # b's ClusterIP was given back
    out_of_range = create_error(
        store, service("c", type="NodePort", ports=[{"port": 80, "nodePort": 8080}])
    )
    assert "The range of valid ports is 30000-32767" in out_of_range.message


def test_node_port_on_a_cluster_ip_service_is_forbidden() -> None:
    error = create_error(Store(), service("a", ports=[{"port": 80, "nodePort": 30080}]))
    assert invalid_fields(error) == ["spec.ports[0].nodePort"]


def test_load_balancer_with_local_policy_gets_a_health_check_port() -> None:
    spec = (
        Store()
        .create(SERVICES, service("lb", type="LoadBalancer", externalTrafficPolicy="Local"))
        .body["spec"]
    )
    assert 30000 <= spec["healthCheckNodePort"] <= 32767
    assert spec["healthCheckNodePort"] != spec["ports"][0]["nodePort"]
    assert spec["allocateLoadBalancerNodePorts"] is True


def test_load_balancer_without_node_ports() -> None:
    spec = (
        Store()
        .create(SERVICES, service("lb", type="LoadBalancer", allocateLoadBalancerNodePorts=False))
        .body["spec"]
    )
    assert "nodePort" not in spec["ports"][0]


def test_type_change_to_cluster_ip_releases_node_ports() -> None:
    store = Store()
    created = store.create(SERVICES, service("web", type="NodePort"))
    node_port = created.body["spec"]["ports"][0]["nodePort"]
    body = created.mutable_copy()
    body["spec"]["type"] = "ClusterIP"
    updated = store.update(SERVICES, body)
    assert "nodePort" not in updated.body["spec"]["ports"][0]
    assert "externalTrafficPolicy" not in updated.body["spec"]
    assert not store.network.node_ports.is_allocated(node_port)
    assert updated.body["spec"]["clusterIP"] == created.body["spec"]["clusterIP"]


def test_type_change_to_external_name_releases_the_cluster_ip() -> None:
    store = Store()
    created = store.create(SERVICES, service("web"))
    body = created.mutable_copy()
    body["spec"].update(type="ExternalName", externalName="db.example.com")
    updated = store.update(SERVICES, body)
    assert "clusterIP" not in updated.body["spec"]
    assert store.network.cluster_ips[0].used == 0


def test_update_keeps_allocated_values_the_client_left_out() -> None:
    store = Store()
    created = store.create(SERVICES, service("web", type="NodePort"))
    body = created.mutable_copy()
    for field in ("clusterIP", "clusterIPs"):
        del body["spec"][field]
    del body["spec"]["ports"][0]["nodePort"]
    body["spec"]["ports"][0]["targetPort"] = 8080
    updated = store.update(SERVICES, body)
    assert updated.body["spec"]["clusterIP"] == created.body["spec"]["clusterIP"]
    assert (
        updated.body["spec"]["ports"][0]["nodePort"] == created.body["spec"]["ports"][0]["nodePort"]
    )


def test_cluster_ip_is_immutable() -> None:
    store = Store()
    created = store.create(SERVICES, service("web"))
    body = created.mutable_copy()
    body["spec"]["clusterIP"] = body["spec"]["clusterIPs"][0] = "10.96.9.9"
    with pytest.raises(ApiError) as caught:
        store.update(SERVICES, body)
    assert invalid_fields(caught.value) == ["spec.clusterIPs[0]"]


@pytest.mark.parametrize(
    ("ports", "fields"),
    [
        ([{"port": 0}], ["spec.ports[0].port"]),
        ([{"port": 70000}], ["spec.ports[0].port"]),
        ([{"port": 80, "protocol": "ICMP"}], ["spec.ports[0].protocol"]),
        ([{"port": 80}, {"port": 81}], ["spec.ports[0].name", "spec.ports[1].name"]),
        ([{"name": "a", "port": 80}, {"name": "a", "port": 81}], ["spec.ports[1].name"]),
        ([{"name": "a", "port": 80}, {"name": "b", "port": 80}], ["spec.ports[1]"]),
        ([{"port": 80, "targetPort": "Not_Valid"}], ["spec.ports[0].targetPort"]),
        ([], ["spec.ports"]),
    ],
)
def test_port_validation(ports: list[dict[str, Any]], fields: list[str]) -> None:
    assert invalid_fields(create_error(Store(), service("web", ports=ports))) == fields


def test_unknown_type_is_unsupported() -> None:
    error = create_error(Store(), service("web", type="Magic"))
    assert error.details is not None
    assert error.details["causes"][0]["reason"] == "FieldValueNotSupported"


def test_dual_stack_policies() -> None:
    store = Store(service_cidrs=DUAL_STACK)
    single = store.create(SERVICES, service("single")).body["spec"]
    assert single["ipFamilies"] == ["IPv4"] and len(single["clusterIPs"]) == 1
    prefer = store.create(SERVICES, service("prefer", ipFamilyPolicy="PreferDualStack")).body[
        "spec"
    ]
    assert prefer["ipFamilies"] == ["IPv4", "IPv6"]
    assert ipaddress.ip_address(prefer["clusterIPs"][1]).version == 6
    v6_first = store.create(
        SERVICES, service("v6", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"])
    ).body["spec"]
    assert ipaddress.ip_address(v6_first["clusterIP"]).version == 6
    by_address = store.create(SERVICES, service("by-ip", clusterIP="fd00:10:96::99")).body["spec"]
    assert by_address["ipFamilies"] == ["IPv6"]


def test_dual_stack_upgrade_and_downgrade() -> None:
    store = Store(service_cidrs=DUAL_STACK)
    created = store.create(SERVICES, service("web"))
    body = created.mutable_copy()
    body["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    upgraded = store.update(SERVICES, body)
    assert len(upgraded.body["spec"]["clusterIPs"]) == 2
    secondary = upgraded.body["spec"]["clusterIPs"][1]
    down = upgraded.mutable_copy()
    down["spec"]["ipFamilyPolicy"] = "SingleStack"
    downgraded = store.update(SERVICES, down)
    assert downgraded.body["spec"]["clusterIPs"] == [created.body["spec"]["clusterIP"]]
    assert not store.network.cluster_ips[1].is_allocated(secondary)


def test_single_stack_cluster_refuses_dual_stack() -> None:
    error = create_error(Store(), service("web", ipFamilyPolicy="RequireDualStack"))
    assert invalid_fields(error) == ["spec.ipFamilyPolicy"]
    assert "not configured for dual-stack" in error.message
    v6 = create_error(Store(), service("web", ipFamilies=["IPv6"]))
    assert invalid_fields(v6) == ["spec.ipFamilies[0]"]


def test_load_balancer_ingress_must_be_an_ip() -> None:
    body = service("lb", type="LoadBalancer")
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}}
    assert invalid_fields(create_error(Store(), body)) == ["status.loadBalancer.ingress[0].ip"]
