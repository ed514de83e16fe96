"""parse_service: v1 Service -> ServiceInfo, each case named after the kube-proxy behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.model.labels import label_selector, service_selected
from kproxy.model.service import parse_service
from kproxy.model.types import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    Parsed,
    Protocol,
    Rejection,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)


def service(
    *,
    labels: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    status: Any = None,
    **spec: Any,
) -> dict[str, Any]:
    """A valid ClusterIP service default/web with one port, fields replaced by ``spec``."""
    base_spec: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
    }
    base_spec.update(spec)
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "default", "name": "web"},
        "spec": base_spec,
    }
    if labels is not None:
        obj["metadata"]["labels"] = labels
    if annotations is not None:
        obj["metadata"]["annotations"] = annotations
    if status is not None:
        obj["status"] = status
    return obj


def ok(parsed: Parsed[ServiceInfo]) -> ServiceInfo:
    """The parsed service, asserting nothing was rejected."""
    assert parsed.rejections == ()
    assert parsed.value is not None
    return parsed.value


def only_port(parsed: Parsed[ServiceInfo]) -> ServicePort:
    assert parsed.value is not None
    assert len(parsed.value.ports) == 1
    return parsed.value.ports[0]


def fields(parsed: Parsed[Any]) -> list[tuple[str, bool]]:
    return [(r.field, r.whole_object) for r in parsed.rejections]


# --- the basic record -------------------------------------------------------------------


def test_cluster_ip_service_becomes_one_service_port_per_spec_port() -> None:
    obj = service(
        ports=[
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns"},
        ]
    )
    info = ok(parse_service(obj))
    assert info.key.namespace == "default" and info.key.name == "web"
    assert [p.name for p in info.ports] == [
        ServicePortName("default", "web", "http", Protocol.TCP),
        ServicePortName("default", "web", "dns", Protocol.UDP),
    ]
    http = info.ports[0]
    assert http == ServicePort(
        name=ServicePortName("default", "web", "http", Protocol.TCP),
        type=ServiceType.CLUSTER_IP,
        cluster_ips=("10.96.0.10",),
        port=80,
        protocol=Protocol.TCP,
        target_port=8080,
    )
    assert info.ports[1].target_port == "dns"


def test_port_defaults_follow_the_api_defaults_tcp_and_unnamed() -> None:
    port = only_port(parse_service(service(ports=[{"port": 80}])))
    assert port.name == ServicePortName("default", "web", "", Protocol.TCP)
    assert port.protocol is Protocol.TCP
    assert port.target_port == 80  # targetPort defaults to port


def test_missing_type_means_cluster_ip_as_the_api_default() -> None:
    obj = service()
    del obj["spec"]["type"]
    assert only_port(parse_service(obj)).type is ServiceType.CLUSTER_IP


# --- services kube-proxy skips without complaint ----------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"clusterIP": "None", "clusterIPs": ["None"]}, id="headless-clusterIP-None"),
        pytest.param({"clusterIP": "None", "clusterIPs": None}, id="headless-legacy-field-only"),
        pytest.param({"clusterIP": "", "clusterIPs": []}, id="no-cluster-ip-yet"),
        pytest.param({"clusterIP": None, "clusterIPs": None}, id="cluster-ip-absent"),
        pytest.param(
            {"type": "ExternalName", "externalName": "db.example.com", "clusterIPs": None,
             "clusterIP": None},
            id="external-name",
        ),
        pytest.param(
            {"type": "ExternalName", "clusterIP": "bogus", "clusterIPs": ["bogus"]},
            id="external-name-is-skipped-before-its-cluster-ip-is-looked-at",
        ),
    ],
)
def test_should_skip_service_gives_no_ports_and_no_rejection(spec: dict[str, Any]) -> None:
    info = ok(parse_service(service(**spec)))
    assert info == ServiceInfo("default", "web", ())


@pytest.mark.parametrize(
    ("labels", "proxy_name", "served"),
    [
        pytest.param({}, "", True, id="unlabelled-served-by-default-proxy"),
        pytest.param({"app": "web"}, "", True, id="other-labels-irrelevant"),
        pytest.param({"service.kubernetes.io/headless": ""}, "", False, id="headless-label"),
        pytest.param(
            {"service.kubernetes.io/headless": "false"}, "", False,
            id="headless-label-any-value-DoesNotExist-selector",
        ),
        pytest.param(
            {"service.kubernetes.io/service-proxy-name": "other"}, "", False,
            id="labelled-for-another-proxy",
        ),
        pytest.param(
            {"service.kubernetes.io/service-proxy-name": "kproxy"}, "kproxy", True,
            id="labelled-for-this-proxy",
        ),
        pytest.param({}, "kproxy", False, id="named-proxy-ignores-unlabelled"),
        pytest.param(
            {"service.kubernetes.io/service-proxy-name": "other"}, "kproxy", False,
            id="named-proxy-ignores-other-names",
        ),
        pytest.param(
            {"service.kubernetes.io/service-proxy-name": "kproxy",
             "service.kubernetes.io/headless": ""},
            "kproxy", False, id="headless-wins-over-own-name",
        ),
    ],
)
def test_label_selector_rules_of_kube_proxy_informers(
    labels: dict[str, str], proxy_name: str, served: bool
) -> None:
    assert service_selected(labels, proxy_name) is served
    info = ok(parse_service(service(labels=labels), proxy_name=proxy_name))
    assert bool(info.ports) is served
    assert info.key.name == "web"  # an ignored service is still identified (update -> removal)


def test_label_selector_string_matches_kube_proxy_requirements() -> None:
    assert label_selector("") == (
        "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
    )
    assert label_selector("kproxy") == (
        "!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name=kproxy"
    )


@pytest.mark.parametrize("name", ["a,b", "with space", "-leading", "x" * 64, "a=b"])
def test_label_selector_refuses_names_that_are_not_label_values(name: str) -> None:
    with pytest.raises(ValueError, match="service proxy name"):
        label_selector(name)


# --- cluster IPs ------------------------------------------------------------------------


def test_cluster_ips_keep_order_and_are_normalised_one_per_family() -> None:
    obj = service(clusterIP="2001:DB8::A", clusterIPs=["2001:DB8::A", "10.96.0.10"])
    assert only_port(parse_service(obj)).cluster_ips == ("2001:db8::a", "10.96.0.10")


def test_legacy_cluster_ip_is_used_when_cluster_ips_is_absent() -> None:
    obj = service(clusterIP="10.96.0.11", clusterIPs=None)
    assert only_port(parse_service(obj)).cluster_ips == ("10.96.0.11",)


def test_a_second_cluster_ip_of_one_family_is_ignored_like_get_cluster_ip_by_family() -> None:
    parsed = parse_service(service(clusterIPs=["10.96.0.10", "10.96.0.11"]))
    assert only_port(parsed).cluster_ips == ("10.96.0.10",)
    assert fields(parsed) == [("spec.clusterIPs[1]", False)]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"clusterIPs": ["10.96.0.10", "bogus"]}, "spec.clusterIPs[1]"),
        ({"clusterIPs": ["010.96.0.10"]}, "spec.clusterIPs[0]"),
        ({"clusterIPs": None, "clusterIP": "10.96.0.300"}, "spec.clusterIP"),
        ({"clusterIPs": None, "clusterIP": 42}, "spec.clusterIP"),
        ({"clusterIPs": "10.96.0.10"}, "spec.clusterIPs"),
    ],
)
def test_an_invalid_cluster_ip_skips_the_whole_service(spec: dict[str, Any], field: str) -> None:
    parsed = parse_service(service(**spec))
    assert parsed.value is None
    assert fields(parsed) == [(field, True)]


# --- ports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_port", "field"),
    [
        pytest.param({"name": "b", "port": 0}, "spec.ports[1].port", id="port-zero"),
        pytest.param({"name": "b", "port": 65536}, "spec.ports[1].port", id="port-too-big"),
        pytest.param({"name": "b", "port": -1}, "spec.ports[1].port", id="port-negative"),
        pytest.param({"name": "b", "port": "80"}, "spec.ports[1].port", id="port-string"),
        pytest.param({"name": "b", "port": 80.0}, "spec.ports[1].port", id="port-float"),
        pytest.param({"name": "b", "port": True}, "spec.ports[1].port", id="port-bool"),
        pytest.param({"name": "b"}, "spec.ports[1].port", id="port-missing"),
        pytest.param({"name": "b", "port": 81, "protocol": "ICMP"}, "spec.ports[1].protocol",
                     id="unknown-protocol"),
        pytest.param({"name": "b", "port": 81, "protocol": "tcp"}, "spec.ports[1].protocol",
                     id="protocol-is-case-sensitive"),
        pytest.param({"name": 7, "port": 81}, "spec.ports[1].name", id="name-not-string"),
        pytest.param({"name": "n" * 64, "port": 81}, "spec.ports[1].name", id="name-oversized"),
        pytest.param("port 81", "spec.ports[1]", id="entry-not-an-object"),
    ],
)
def test_a_bad_port_entry_drops_only_that_port(bad_port: Any, field: str) -> None:
    obj = service(
        ports=[{"name": "a", "port": 80}, bad_port, {"name": "c", "port": 82}]
    )
    parsed = parse_service(obj)
    assert parsed.value is not None
    assert [p.port for p in parsed.value.ports] == [80, 82]
    assert fields(parsed) == [(field, False)]


@pytest.mark.parametrize("target", [0, 70000, "", "much-too-long-port-name", 1.5, None])
def test_a_bad_target_port_is_reported_but_the_port_is_programmed(target: Any) -> None:
    port_entry: dict[str, Any] = {"name": "a", "port": 80, "targetPort": target}
    parsed = parse_service(service(ports=[port_entry]))
    assert only_port(parsed).target_port == 80
    expected = [] if target is None else [("spec.ports[0].targetPort", False)]
    assert fields(parsed) == expected


def test_duplicate_port_name_and_protocol_later_entry_wins_as_in_kube_proxy_map() -> None:
    obj = service(
        ports=[
            {"name": "a", "port": 80},
            {"name": "a", "port": 81, "protocol": "UDP"},  # different protocol: distinct
            {"name": "a", "port": 82},
        ]
    )
    parsed = parse_service(obj)
    assert parsed.value is not None
    assert [(p.port, p.protocol) for p in parsed.value.ports] == [
        (81, Protocol.UDP),
        (82, Protocol.TCP),
    ]
    assert fields(parsed) == [("spec.ports[0]", False)]


def test_a_service_without_ports_has_no_service_ports() -> None:
    assert ok(parse_service(service(ports=None))).ports == ()
    assert ok(parse_service(service(ports=[]))).ports == ()


# --- node ports -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_type", "node_port", "expected", "rejected"),
    [
        ("NodePort", 30080, 30080, False),
        ("LoadBalancer", 30080, 30080, False),
        ("LoadBalancer", 0, None, False),  # allocateLoadBalancerNodePorts: false
        ("LoadBalancer", None, None, False),
        ("NodePort", 65536, None, True),
        ("NodePort", "30080", None, True),
        ("ClusterIP", 30080, None, True),  # the API server forbids it; never programmed
    ],
)
def test_node_port_only_for_node_port_and_load_balancer_services(
    service_type: str, node_port: Any, expected: int | None, rejected: bool
) -> None:
    obj = service(type=service_type, ports=[{"port": 80, "nodePort": node_port}])
    parsed = parse_service(obj)
    port = only_port(parsed)
    assert port.node_port == expected
    assert port.port == 80  # the cluster IP part keeps working either way
    assert fields(parsed) == ([("spec.ports[0].nodePort", False)] if rejected else [])


# --- external IPs, load-balancer IPs, source ranges ------------------------------------


def test_external_ips_keep_both_families_and_drop_only_invalid_entries() -> None:
    parsed = parse_service(
        service(externalIPs=["192.0.2.1", "2001:DB8::5", "not-an-ip", "192.0.2.1", 7])
    )
    assert only_port(parsed).external_ips == ("192.0.2.1", "2001:db8::5")
    assert fields(parsed) == [("spec.externalIPs[2]", False), ("spec.externalIPs[4]", False)]


def test_load_balancer_ips_follow_is_vip_mode() -> None:
    status = {
        "loadBalancer": {
            "ingress": [
                {"ip": "203.0.113.1"},  # no ipMode: VIP
                {"ip": "203.0.113.2", "ipMode": "VIP"},
                {"ip": "203.0.113.3", "ipMode": "Proxy"},  # the LB forwards to node ports
                {"hostname": "lb.example.com"},  # no IP: nothing to program
                {"ip": "lb.example.com"},
                {"ip": "203.0.113.4", "ipMode": "Magic"},
            ]
        }
    }
    parsed = parse_service(service(type="LoadBalancer", status=status))
    assert only_port(parsed).load_balancer_ips == ("203.0.113.1", "203.0.113.2")
    assert fields(parsed) == [
        ("status.loadBalancer.ingress[4].ip", False),
        ("status.loadBalancer.ingress[5].ipMode", False),
    ]


@pytest.mark.parametrize(
    "status", ["broken", {"loadBalancer": []}, {"loadBalancer": {"ingress": {}}}]
)
def test_malformed_status_only_loses_load_balancer_ips(status: Any) -> None:
    parsed = parse_service(service(type="LoadBalancer", status=status))
    assert only_port(parsed).load_balancer_ips == ()
    assert len(parsed.rejections) == 1 and not parsed.rejections[0].whole_object


def test_source_ranges_are_trimmed_masked_and_invalid_ones_dropped() -> None:
    parsed = parse_service(
        service(
            type="LoadBalancer",
            loadBalancerSourceRanges=[" 10.1.2.3/8 ", "2001:db8::1/64", "10.0.0.0", "x/8"],
        )
    )
    assert only_port(parsed).load_balancer_source_ranges == ("10.0.0.0/8", "2001:db8::/64")
    assert fields(parsed) == [
        ("spec.loadBalancerSourceRanges[2]", False),
        ("spec.loadBalancerSourceRanges[3]", False),
    ]


def test_source_range_annotation_is_not_read_as_kube_proxy_does_not_read_it() -> None:
    obj = service(
        type="LoadBalancer",
        annotations={"service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8"},
    )
    parsed = parse_service(obj)
    assert parsed.rejections == ()
    assert only_port(parsed).load_balancer_source_ranges == ()


# --- traffic policies and health check node port ---------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param({"type": "NodePort", "externalTrafficPolicy": "Local"}, TrafficPolicy.LOCAL,
                     id="node-port-local"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
                     TrafficPolicy.LOCAL, id="load-balancer-local"),
        pytest.param({"type": "NodePort", "externalTrafficPolicy": "Cluster"},
                     TrafficPolicy.CLUSTER, id="node-port-cluster"),
        pytest.param({"type": "NodePort"}, TrafficPolicy.CLUSTER, id="default-cluster"),
        pytest.param({"externalTrafficPolicy": "Local"}, TrafficPolicy.CLUSTER,
                     id="cluster-ip-not-externally-accessible"),
        pytest.param({"externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.1"]},
                     TrafficPolicy.LOCAL, id="cluster-ip-with-external-ips-is-accessible"),
    ],
)
def test_external_traffic_policy_as_external_policy_local(
    spec: dict[str, Any], expected: TrafficPolicy
) -> None:
    spec.setdefault("healthCheckNodePort", 32000)
    port = only_port(parse_service(service(**spec)))
    assert port.external_traffic_policy is expected


def test_unknown_traffic_policies_fall_back_to_cluster_with_a_rejection() -> None:
    parsed = parse_service(
        service(type="NodePort", externalTrafficPolicy="OnlyLocal", internalTrafficPolicy=3)
    )
    port = only_port(parsed)
    assert port.external_traffic_policy is TrafficPolicy.CLUSTER
    assert port.internal_traffic_policy is TrafficPolicy.CLUSTER
    assert fields(parsed) == [
        ("spec.externalTrafficPolicy", False),
        ("spec.internalTrafficPolicy", False),
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(None, TrafficPolicy.CLUSTER), ("Cluster", TrafficPolicy.CLUSTER),
                            ("Local", TrafficPolicy.LOCAL)]
)
def test_internal_traffic_policy_as_internal_policy_local(
    value: str | None, expected: TrafficPolicy
) -> None:
    port = only_port(parse_service(service(internalTrafficPolicy=value)))
    assert port.internal_traffic_policy is expected


@pytest.mark.parametrize(
    ("spec", "expected", "rejected"),
    [
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32000}, 32000, False, id="lb-local"),
        pytest.param({"type": "NodePort", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32000}, None, False, id="node-port-has-none"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                      "healthCheckNodePort": 32000}, None, False, id="lb-cluster-has-none"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}, None, True,
                     id="lb-local-missing-is-logged-as-kube-proxy-logs-it"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 70000}, None, True, id="lb-local-out-of-range"),
    ],
)
def test_health_check_node_port_only_when_needs_health_check(
    spec: dict[str, Any], expected: int | None, rejected: bool
) -> None:
    parsed = parse_service(service(**spec))
    assert only_port(parsed).health_check_node_port == expected
    assert fields(parsed) == ([("spec.healthCheckNodePort", False)] if rejected else [])


# --- session affinity, traffic distribution ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "affinity", "timeout", "rejected_field"),
    [
        pytest.param({}, SessionAffinity.NONE, DEFAULT_AFFINITY_TIMEOUT_SECONDS, None, id="none"),
        pytest.param({"sessionAffinity": "ClientIP"}, SessionAffinity.CLIENT_IP,
                     DEFAULT_AFFINITY_TIMEOUT_SECONDS, None, id="client-ip-default-10800"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
                     SessionAffinity.CLIENT_IP, 60, None, id="client-ip-timeout"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}},
                     SessionAffinity.CLIENT_IP, 86400, None, id="client-ip-max-one-day"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
                     SessionAffinity.CLIENT_IP, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", id="over-one-day"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
                     SessionAffinity.CLIENT_IP, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", id="zero"),
        pytest.param({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": []}},
                     SessionAffinity.CLIENT_IP, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                     "spec.sessionAffinityConfig.clientIP", id="config-malformed"),
        pytest.param({"sessionAffinity": "Cookie"}, SessionAffinity.NONE,
                     DEFAULT_AFFINITY_TIMEOUT_SECONDS, "spec.sessionAffinity", id="unknown"),
    ],
)
def test_session_affinity_and_sticky_max_age(
    spec: dict[str, Any], affinity: SessionAffinity, timeout: int, rejected_field: str | None
) -> None:
    parsed = parse_service(service(**spec))
    port = only_port(parsed)
    assert (port.session_affinity, port.affinity_timeout_seconds) == (affinity, timeout)
    assert fields(parsed) == ([] if rejected_field is None else [(rejected_field, False)])


@pytest.mark.parametrize(
    ("value", "expected", "rejected"),
    [(None, None, False), ("PreferClose", "PreferClose", False),
     ("PreferSameNode", "PreferSameNode", False), (5, None, True), ("x" * 100, None, True)],
)
def test_traffic_distribution_is_kept_for_the_planner(
    value: Any, expected: str | None, rejected: bool
) -> None:
    parsed = parse_service(service(trafficDistribution=value))
    assert only_port(parsed).traffic_distribution == expected
    assert fields(parsed) == ([("spec.trafficDistribution", False)] if rejected else [])


def test_unknown_service_type_is_programmed_as_cluster_ip_with_a_rejection() -> None:
    parsed = parse_service(service(type="Magic"))
    assert only_port(parsed).type is ServiceType.CLUSTER_IP
    assert fields(parsed) == [("spec.type", False)]


# --- whole-object rejections ------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "field", "namespace", "name"),
    [
        pytest.param("a string", "(object)", "", "", id="not-an-object"),
        pytest.param({"spec": {}}, "metadata", "", "", id="no-metadata"),
        pytest.param({"metadata": {"namespace": "default"}, "spec": {}}, "metadata.name",
                     "default", "", id="no-name"),
        pytest.param({"metadata": {"namespace": "default", "name": ""}}, "metadata.name",
                     "default", "", id="empty-name"),
        pytest.param({"metadata": {"namespace": "default", "name": "n" * 300}}, "metadata.name",
                     "default", "n" * 253 + "...", id="oversized-name"),
        pytest.param({"metadata": {"name": "web"}}, "metadata.namespace", "", "web",
                     id="no-namespace"),
        pytest.param({"metadata": {"namespace": "default", "name": "web", "labels": []}},
                     "metadata.labels", "default", "web", id="labels-not-an-object"),
        pytest.param({"metadata": {"namespace": "default", "name": "web"}}, "spec", "default",
                     "web", id="no-spec"),
        pytest.param({"metadata": {"namespace": "default", "name": "web"}, "spec": []}, "spec",
                     "default", "web", id="spec-not-an-object"),
        pytest.param(service(ports={"port": 80}), "spec.ports", "default", "web",
                     id="ports-not-a-list"),
    ],
)
def test_unusable_objects_are_skipped_whole_with_one_rejection_naming_them(
    obj: Any, field: str, namespace: str, name: str
) -> None:
    parsed = parse_service(obj)
    assert parsed.value is None
    assert parsed.rejections == (
        Rejection("Service", namespace, name, field, parsed.rejections[0].reason, True),
    )
    assert parsed.rejections[0].reason


def test_values_too_large_to_print_are_still_reported() -> None:
    parsed = parse_service(service(ports=[{"port": 10**5000}]))
    assert parsed.value is not None and parsed.value.ports == ()
    assert fields(parsed) == [("spec.ports[0].port", False)]
    assert "unprintable int" in parsed.rejections[0].reason
