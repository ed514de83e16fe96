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
    RejectReason,
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


def accepted(parsed: Parsed[ServiceInfo]) -> Parsed[ServiceInfo]:
    """``parsed``, asserting nothing was rejected."""
    ok(parsed)
    return parsed


def only_port(parsed: Parsed[ServiceInfo]) -> ServicePort:
    assert parsed.value is not None
    assert len(parsed.value.ports) == 1
    return parsed.value.ports[0]


def fields(parsed: Parsed[Any]) -> list[tuple[str, bool]]:
    return [(r.field, r.whole_object) for r in parsed.rejections]


def rejected(parsed: Parsed[Any]) -> tuple[str, RejectReason]:
    """The field and reason code of the one rejection, asserting the object is skipped whole."""
    assert parsed.value is None
    assert len(parsed.rejections) == 1 and parsed.rejections[0].whole_object
    return parsed.rejections[0].field, parsed.rejections[0].code


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


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        pytest.param({"clusterIPs": ["10.96.0.10", "10.96.0.11"]}, "spec.clusterIPs[1]",
                     RejectReason.INCONSISTENT, id="two-of-one-family"),
        pytest.param({"clusterIPs": ["10.96.0.10", "2001:db8::1", "10.96.0.12"]},
                     "spec.clusterIPs", RejectReason.TOO_MANY, id="more-than-two"),
        pytest.param({"clusterIP": "10.96.0.99"}, "spec.clusterIP", RejectReason.INCONSISTENT,
                     id="cluster-ip-is-not-cluster-ips-0"),
        pytest.param({"clusterIP": "None", "clusterIPs": ["None", "10.96.0.10"]},
                     "spec.clusterIPs", RejectReason.INCONSISTENT, id="none-and-an-ip"),
        pytest.param({"type": "NodePort", "clusterIP": "None", "clusterIPs": ["None"]},
                     "spec.clusterIPs", RejectReason.FORBIDDEN, id="headless-node-port"),
        pytest.param({"type": "ExternalName", "externalName": "db.example.com",
                      "clusterIP": "bogus", "clusterIPs": ["bogus"]},
                     "spec.clusterIPs", RejectReason.FORBIDDEN, id="external-name-with-ips"),
    ],
)
def test_cluster_ips_the_api_server_would_refuse_skip_the_whole_service(
    spec: dict[str, Any], field: str, code: RejectReason
) -> None:
    assert rejected(parse_service(service(**spec))) == (field, code)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"clusterIPs": ["10.96.0.10", "bogus"]}, "spec.clusterIPs[1]"),
        ({"clusterIPs": ["010.96.0.10"], "clusterIP": "010.96.0.10"}, "spec.clusterIPs[0]"),
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
    ("bad_port", "field", "code"),
    [
        pytest.param({"name": "b", "port": 0}, "spec.ports[1].port", RejectReason.INVALID_PORT,
                     id="port-zero"),
        pytest.param({"name": "b", "port": 65536}, "spec.ports[1].port",
                     RejectReason.INVALID_PORT, id="port-too-big"),
        pytest.param({"name": "b", "port": -1}, "spec.ports[1].port", RejectReason.INVALID_PORT,
                     id="port-negative"),
        pytest.param({"name": "b", "port": "80"}, "spec.ports[1].port",
                     RejectReason.INVALID_PORT, id="port-string"),
        pytest.param({"name": "b", "port": 80.0}, "spec.ports[1].port",
                     RejectReason.INVALID_PORT, id="port-float"),
        pytest.param({"name": "b", "port": True}, "spec.ports[1].port",
                     RejectReason.INVALID_PORT, id="port-bool"),
        pytest.param({"name": "b"}, "spec.ports[1].port", RejectReason.INVALID_PORT,
                     id="port-missing"),
        pytest.param({"name": "b", "port": 81, "protocol": "ICMP"}, "spec.ports[1].protocol",
                     RejectReason.UNSUPPORTED_VALUE, id="unknown-protocol"),
        pytest.param({"name": "b", "port": 81, "protocol": "tcp"}, "spec.ports[1].protocol",
                     RejectReason.UNSUPPORTED_VALUE, id="protocol-is-case-sensitive"),
        pytest.param({"name": 7, "port": 81}, "spec.ports[1].name", RejectReason.WRONG_TYPE,
                     id="name-not-string"),
        pytest.param({"name": "n" * 64, "port": 81}, "spec.ports[1].name",
                     RejectReason.INVALID_NAME, id="name-oversized"),
        pytest.param({"name": "10.0.0.0/8", "port": 81}, "spec.ports[1].name",
                     RejectReason.INVALID_NAME, id="name-not-a-dns-label"),
        pytest.param({"name": "b\x00", "port": 81}, "spec.ports[1].name",
                     RejectReason.INVALID_NAME, id="name-with-nul"),
        pytest.param({"name": "B", "port": 81}, "spec.ports[1].name", RejectReason.INVALID_NAME,
                     id="name-upper-case"),
        pytest.param({"port": 81}, "spec.ports[1].name", RejectReason.MISSING,
                     id="name-required-with-several-ports"),
        pytest.param({"name": "a", "port": 81}, "spec.ports[1].name", RejectReason.DUPLICATE,
                     id="duplicate-name"),
        pytest.param({"name": "b", "port": 80}, "spec.ports[1]", RejectReason.DUPLICATE,
                     id="duplicate-port-and-protocol"),
        pytest.param("port 81", "spec.ports[1]", RejectReason.WRONG_TYPE,
                     id="entry-not-an-object"),
    ],
)
def test_a_bad_port_entry_skips_the_whole_service(
    bad_port: Any, field: str, code: RejectReason
) -> None:
    obj = service(
        ports=[{"name": "a", "port": 80}, bad_port, {"name": "c", "port": 82}]
    )
    assert rejected(parse_service(obj)) == (field, code)


def test_port_names_may_be_any_dns_label_up_to_63_characters() -> None:
    # The API checks service port names as DNS-1123 labels (IANA_SVC_NAME is for target
    # ports): a long name or one of digits only is fine.
    ports = [{"name": "a" * 63, "port": 80}, {"name": "8080", "port": 81}]
    assert [p.name.port for p in ok(parse_service(service(ports=ports))).ports] == [
        "a" * 63, "8080"
    ]


def test_the_same_port_number_may_serve_two_protocols() -> None:
    ports = [{"name": "dns", "port": 53, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    assert len(ok(parse_service(service(ports=ports))).ports) == 2


def test_too_many_ports_skip_the_whole_service() -> None:
    ports = [{"name": f"p{i}", "port": 1 + i} for i in range(1001)]
    assert rejected(parse_service(service(ports=ports))) == ("spec.ports", RejectReason.TOO_MANY)


@pytest.mark.parametrize("target", [0, "", None])
def test_an_unset_target_port_is_the_port_as_the_api_defaults_it(target: Any) -> None:
    port_entry: dict[str, Any] = {"name": "a", "port": 80, "targetPort": target}
    assert only_port(accepted(_parsed(port_entry))).target_port == 80


@pytest.mark.parametrize("target", ["http", "h-t-t-p", "a1234567890bcde", 1, 65535])
def test_target_ports_are_numbers_or_iana_service_names(target: Any) -> None:
    port_entry: dict[str, Any] = {"name": "a", "port": 80, "targetPort": target}
    assert only_port(accepted(_parsed(port_entry))).target_port == target


@pytest.mark.parametrize(
    "target",
    [70000, -1, "much-too-long-port-name", 1.5, "8080", "-http", "http-", "h--p", "HTTP",
     "ht tp", True],
)
def test_a_bad_target_port_skips_the_whole_service(target: Any) -> None:
    port_entry: dict[str, Any] = {"name": "a", "port": 80, "targetPort": target}
    assert rejected(_parsed(port_entry)) == (
        "spec.ports[0].targetPort", RejectReason.INVALID_PORT
    )


def _parsed(port_entry: dict[str, Any]) -> Parsed[ServiceInfo]:
    return parse_service(service(ports=[port_entry]))


def test_a_service_without_ports_is_rejected_unless_headless() -> None:
    # The API server requires a port of every service but headless and ExternalName ones.
    assert rejected(parse_service(service(ports=None))) == ("spec.ports", RejectReason.MISSING)
    assert rejected(parse_service(service(ports=[]))) == ("spec.ports", RejectReason.MISSING)
    for headless in ({"clusterIP": "None", "clusterIPs": ["None"]},
                     {"clusterIP": "None", "clusterIPs": None}):
        assert ok(parse_service(service(ports=[], **headless))).ports == ()
    assert ok(parse_service(service(type="ExternalName", externalName="db.example.com",
                                    clusterIP=None, clusterIPs=None, ports=None))).ports == ()


# --- node ports -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_type", "node_port", "expected"),
    [
        ("NodePort", 30080, 30080),
        ("LoadBalancer", 30080, 30080),
        ("LoadBalancer", 0, None),  # allocateLoadBalancerNodePorts: false
        ("LoadBalancer", None, None),
        ("ClusterIP", 0, None),
    ],
)
def test_node_port_only_for_node_port_and_load_balancer_services(
    service_type: str, node_port: Any, expected: int | None
) -> None:
    obj = service(type=service_type, ports=[{"port": 80, "nodePort": node_port}])
    port = only_port(accepted(parse_service(obj)))
    assert port.node_port == expected
    assert port.port == 80


@pytest.mark.parametrize(
    ("service_type", "ports", "field", "code"),
    [
        ("NodePort", [{"port": 80, "nodePort": 65536}], "spec.ports[0].nodePort",
         RejectReason.INVALID_PORT),
        ("NodePort", [{"port": 80, "nodePort": "30080"}], "spec.ports[0].nodePort",
         RejectReason.INVALID_PORT),
        ("ClusterIP", [{"port": 80, "nodePort": 30080}], "spec.ports[0].nodePort",
         RejectReason.FORBIDDEN),  # the API server forbids it
        ("NodePort", [{"name": "a", "port": 80, "nodePort": 30080},
                      {"name": "b", "port": 81, "nodePort": 30080}],
         "spec.ports[1].nodePort", RejectReason.DUPLICATE),
    ],
)
def test_a_bad_node_port_skips_the_whole_service(
    service_type: str, ports: list[Any], field: str, code: RejectReason
) -> None:
    assert rejected(parse_service(service(type=service_type, ports=ports))) == (field, code)


# --- external IPs, load-balancer IPs, source ranges ------------------------------------


def test_external_ips_keep_both_families_de_duplicated() -> None:
    parsed = parse_service(service(externalIPs=["192.0.2.1", "2001:DB8::5", "192.0.2.1"]))
    assert only_port(accepted(parsed)).external_ips == ("192.0.2.1", "2001:db8::5")


@pytest.mark.parametrize(
    "bad", ["not-an-ip", 7, "0.0.0.0", "127.0.0.1", "169.254.169.254", "224.0.0.5", "::1",
            "fe80::1", "ff02::2", "::"]
)
def test_an_invalid_or_special_external_ip_skips_the_whole_service(bad: Any) -> None:
    parsed = parse_service(service(externalIPs=["192.0.2.1", bad]))
    assert rejected(parsed) == ("spec.externalIPs[1]", RejectReason.INVALID_IP)


def test_load_balancer_ips_follow_is_vip_mode() -> None:
    status = {
        "loadBalancer": {
            "ingress": [
                {"ip": "203.0.113.1"},  # no ipMode: VIP
                {"ip": "203.0.113.2", "ipMode": "VIP"},
                {"ip": "203.0.113.3", "ipMode": "Proxy"},  # the LB forwards to node ports
                {"hostname": "lb.example.com"},  # no IP: nothing to program
            ]
        }
    }
    parsed = parse_service(service(type="LoadBalancer", status=status))
    assert only_port(accepted(parsed)).load_balancer_ips == ("203.0.113.1", "203.0.113.2")


@pytest.mark.parametrize(
    ("entry", "field", "code"),
    [
        ({"ip": "lb.example.com"}, "status.loadBalancer.ingress[1].ip", RejectReason.INVALID_IP),
        ({"ip": "203.0.113.4", "ipMode": "Magic"}, "status.loadBalancer.ingress[1].ipMode",
         RejectReason.UNSUPPORTED_VALUE),
        ({"hostname": "lb.example.com", "ipMode": "VIP"},
         "status.loadBalancer.ingress[1].ipMode", RejectReason.FORBIDDEN),
        ({"hostname": "203.0.113.9"}, "status.loadBalancer.ingress[1].hostname",
         RejectReason.INVALID_NAME),
        ({"hostname": "lb\nexample"}, "status.loadBalancer.ingress[1].hostname",
         RejectReason.INVALID_NAME),
        ("203.0.113.4", "status.loadBalancer.ingress[1]", RejectReason.WRONG_TYPE),
    ],
)
def test_a_bad_ingress_entry_skips_the_whole_service(
    entry: Any, field: str, code: RejectReason
) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, entry]}}
    assert rejected(parse_service(service(type="LoadBalancer", status=status))) == (field, code)


@pytest.mark.parametrize(
    ("status", "field"),
    [("broken", "status"), ({"loadBalancer": []}, "status.loadBalancer"),
     ({"loadBalancer": {"ingress": {}}}, "status.loadBalancer.ingress")],
)
def test_a_malformed_status_skips_the_whole_service(status: Any, field: str) -> None:
    parsed = parse_service(service(type="LoadBalancer", status=status))
    assert rejected(parsed) == (field, RejectReason.WRONG_TYPE)


def test_source_ranges_are_trimmed_masked_and_read_sloppily_as_kube_proxy_reads_them() -> None:
    parsed = parse_service(
        service(
            type="LoadBalancer",
            loadBalancerSourceRanges=[" 10.1.2.3/8 ", "2001:db8::1/64", "010.001.0.0/016",
                                      "\t192.168.0.0/16\n"],
        )
    )
    assert only_port(accepted(parsed)).load_balancer_source_ranges == (
        "10.0.0.0/8", "2001:db8::/64", "10.1.0.0/16", "192.168.0.0/16"
    )


@pytest.mark.parametrize("bad", ["10.0.0.0", "x/8", "10.0.0.0/33", "256.0.0.0/8", 8, ""])
def test_an_invalid_source_range_skips_the_whole_service(bad: Any) -> None:
    parsed = parse_service(
        service(type="LoadBalancer", loadBalancerSourceRanges=["10.0.0.0/8", bad])
    )
    assert rejected(parsed) == ("spec.loadBalancerSourceRanges[1]", RejectReason.INVALID_CIDR)


def test_source_ranges_only_for_load_balancers() -> None:
    parsed = parse_service(service(type="NodePort", loadBalancerSourceRanges=["10.0.0.0/8"]))
    assert rejected(parsed) == ("spec.loadBalancerSourceRanges", RejectReason.FORBIDDEN)


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
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32000}, TrafficPolicy.LOCAL,
                     id="load-balancer-local"),
        pytest.param({"type": "NodePort", "externalTrafficPolicy": "Cluster"},
                     TrafficPolicy.CLUSTER, id="node-port-cluster"),
        pytest.param({"type": "NodePort"}, TrafficPolicy.CLUSTER, id="default-cluster"),
        pytest.param({}, TrafficPolicy.CLUSTER, id="cluster-ip-not-externally-accessible"),
        pytest.param({"externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.1"]},
                     TrafficPolicy.LOCAL, id="cluster-ip-with-external-ips-is-accessible"),
    ],
)
def test_external_traffic_policy_as_external_policy_local(
    spec: dict[str, Any], expected: TrafficPolicy
) -> None:
    port = only_port(accepted(parse_service(service(**spec))))
    assert port.external_traffic_policy is expected


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        ({"type": "NodePort", "externalTrafficPolicy": "OnlyLocal"},
         "spec.externalTrafficPolicy", RejectReason.UNSUPPORTED_VALUE),
        ({"externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy",
         RejectReason.FORBIDDEN),  # only for externally accessible services
        ({"internalTrafficPolicy": 3}, "spec.internalTrafficPolicy",
         RejectReason.UNSUPPORTED_VALUE),
        ({"internalTrafficPolicy": "local"}, "spec.internalTrafficPolicy",
         RejectReason.UNSUPPORTED_VALUE),
    ],
)
def test_unknown_traffic_policies_skip_the_whole_service(
    spec: dict[str, Any], field: str, code: RejectReason
) -> None:
    assert rejected(parse_service(service(**spec))) == (field, code)


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
    ("spec", "expected", "ignored"),
    [
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32000}, 32000, False, id="lb-local"),
        pytest.param({"type": "NodePort", "externalTrafficPolicy": "Local"}, None, False,
                     id="node-port-has-none"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster"}, None, False,
                     id="lb-cluster-has-none"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}, None, True,
                     id="lb-local-missing-is-logged-as-kube-proxy-logs-it"),
    ],
)
def test_health_check_node_port_only_when_needs_health_check(
    spec: dict[str, Any], expected: int | None, ignored: bool
) -> None:
    parsed = parse_service(service(**spec))
    assert only_port(parsed).health_check_node_port == expected
    assert fields(parsed) == ([("spec.healthCheckNodePort", False)] if ignored else [])


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        pytest.param({"type": "NodePort", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32000}, RejectReason.FORBIDDEN,
                     id="node-port-may-not-have-one"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                      "healthCheckNodePort": 32000}, RejectReason.FORBIDDEN,
                     id="lb-cluster-may-not-have-one"),
        pytest.param({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 70000}, RejectReason.INVALID_PORT,
                     id="lb-local-out-of-range"),
    ],
)
def test_a_bad_health_check_node_port_skips_the_whole_service(
    spec: dict[str, Any], code: RejectReason
) -> None:
    assert rejected(parse_service(service(**spec))) == ("spec.healthCheckNodePort", code)


# --- session affinity, traffic distribution ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "affinity", "timeout"),
    [
        pytest.param({}, SessionAffinity.NONE, DEFAULT_AFFINITY_TIMEOUT_SECONDS, id="none"),
        pytest.param({"sessionAffinity": "ClientIP"}, SessionAffinity.CLIENT_IP,
                     DEFAULT_AFFINITY_TIMEOUT_SECONDS, id="client-ip-default-10800"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
                     SessionAffinity.CLIENT_IP, 60, id="client-ip-timeout"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}},
                     SessionAffinity.CLIENT_IP, 86400, id="client-ip-max-one-day"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}},
                     SessionAffinity.CLIENT_IP, 1, id="client-ip-min-one-second"),
    ],
)
def test_session_affinity_and_sticky_max_age(
    spec: dict[str, Any], affinity: SessionAffinity, timeout: int
) -> None:
    port = only_port(accepted(parse_service(service(**spec))))
    assert (port.session_affinity, port.affinity_timeout_seconds) == (affinity, timeout)


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
                     "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                     RejectReason.INVALID_VALUE, id="over-one-day"),
        pytest.param({"sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
                     "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                     RejectReason.INVALID_VALUE, id="zero"),
        pytest.param({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": []}},
                     "spec.sessionAffinityConfig.clientIP", RejectReason.WRONG_TYPE,
                     id="config-malformed"),
        pytest.param({"sessionAffinity": "Cookie"}, "spec.sessionAffinity",
                     RejectReason.UNSUPPORTED_VALUE, id="unknown"),
        pytest.param({"sessionAffinity": "None",
                      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
                     "spec.sessionAffinityConfig", RejectReason.FORBIDDEN,
                     id="config-without-client-ip-affinity"),
    ],
)
def test_bad_session_affinity_skips_the_whole_service(
    spec: dict[str, Any], field: str, code: RejectReason
) -> None:
    assert rejected(parse_service(service(**spec))) == (field, code)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("PreferClose", "PreferClose"), ("PreferSameZone", "PreferSameZone"),
     ("PreferSameNode", "PreferSameNode")],
)
def test_traffic_distribution_is_kept_for_the_planner(value: Any, expected: str | None) -> None:
    port = only_port(accepted(parse_service(service(trafficDistribution=value))))
    assert port.traffic_distribution == expected


@pytest.mark.parametrize("value", [5, "x" * 100, "preferClose", ""])
def test_an_unknown_traffic_distribution_skips_the_whole_service(value: Any) -> None:
    assert rejected(parse_service(service(trafficDistribution=value))) == (
        "spec.trafficDistribution", RejectReason.UNSUPPORTED_VALUE
    )


def test_an_unknown_service_type_skips_the_whole_service() -> None:
    parsed = parse_service(service(type="Magic"))
    assert rejected(parsed) == ("spec.type", RejectReason.UNSUPPORTED_VALUE)


@pytest.mark.parametrize(
    ("external_name", "code"),
    [(None, RejectReason.MISSING), ("db..example", RejectReason.INVALID_NAME),
     ("DB.example.com", RejectReason.INVALID_NAME)],
)
def test_external_name_services_need_a_dns_name(external_name: Any, code: RejectReason) -> None:
    obj = service(type="ExternalName", externalName=external_name, clusterIP=None,
                  clusterIPs=None)
    assert rejected(parse_service(obj)) == ("spec.externalName", code)


# --- names and labels -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        pytest.param({"name": "Web"}, "metadata.name", id="upper-case"),
        pytest.param({"name": "1web"}, "metadata.name", id="dns-1035-starts-with-a-letter"),
        pytest.param({"name": "web-"}, "metadata.name", id="trailing-dash"),
        pytest.param({"name": "we.b"}, "metadata.name", id="dot"),
        pytest.param({"name": "w" * 64}, "metadata.name", id="too-long"),
        pytest.param({"name": "web\x00"}, "metadata.name", id="nul"),
        pytest.param({"name": "web\n"}, "metadata.name", id="trailing-newline"),
        pytest.param({"namespace": "Default"}, "metadata.namespace", id="ns-upper-case"),
        pytest.param({"namespace": "ns_1"}, "metadata.namespace", id="ns-underscore"),
        pytest.param({"namespace": "a.b"}, "metadata.namespace", id="ns-is-a-label"),
        pytest.param({"namespace": "ns\x1b[31m"}, "metadata.namespace", id="ns-ansi-escape"),
    ],
)
def test_names_are_validated_as_the_api_server_validates_them(
    metadata: dict[str, Any], field: str
) -> None:
    obj = service()
    obj["metadata"].update(metadata)
    assert rejected(parse_service(obj)) == (field, RejectReason.INVALID_NAME)


@pytest.mark.parametrize(
    "labels",
    [{"app": "a b"}, {"app": "x" * 64}, {"app": "-a"}, {"app": 3}, {"bad key": "v"},
     {"/app": "v"}, {"Example.com/app": "v"}, {"example.com/" + "k" * 64: "v"}, {"": "v"}],
)
def test_malformed_labels_skip_the_whole_service(labels: dict[str, Any]) -> None:
    field, code = rejected(parse_service(service(labels=labels)))
    assert field.startswith("metadata.labels[") and code is RejectReason.INVALID_LABEL


def test_valid_labels_are_accepted() -> None:
    labels = {"app": "", "example.com/app": "A.b_c-1", "k8s.io/x": "x" * 63}
    assert ok(parse_service(service(labels=labels))).ports


def test_an_unselected_service_is_not_validated_further() -> None:
    # Labelled for another proxy: not this proxy's business, whatever the rest says.
    obj = service(labels={"service.kubernetes.io/service-proxy-name": "other"}, type="Magic")
    assert ok(parse_service(obj)).ports == ()


# --- whole-object rejections ------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "field", "namespace", "name", "code"),
    [
        pytest.param("a string", "(object)", "", "", RejectReason.WRONG_TYPE,
                     id="not-an-object"),
        pytest.param({"spec": {}}, "metadata", "", "", RejectReason.WRONG_TYPE,
                     id="no-metadata"),
        pytest.param({"metadata": {"namespace": "default"}, "spec": {}}, "metadata.name",
                     "default", "", RejectReason.MISSING, id="no-name"),
        pytest.param({"metadata": {"namespace": "default", "name": ""}}, "metadata.name",
                     "default", "", RejectReason.MISSING, id="empty-name"),
        pytest.param({"metadata": {"namespace": "default", "name": "n" * 300}}, "metadata.name",
                     "default", "n" * 253 + "...", RejectReason.INVALID_NAME,
                     id="oversized-name"),
        pytest.param({"metadata": {"name": "web"}}, "metadata.namespace", "", "web",
                     RejectReason.MISSING, id="no-namespace"),
        pytest.param({"metadata": {"namespace": "", "name": "web"}}, "metadata.namespace", "",
                     "web", RejectReason.MISSING, id="empty-namespace"),
        pytest.param({"metadata": {"namespace": "default", "name": "web", "labels": []}},
                     "metadata.labels", "default", "web", RejectReason.WRONG_TYPE,
                     id="labels-not-an-object"),
        pytest.param({"metadata": {"namespace": "default", "name": "web"}}, "spec", "default",
                     "web", RejectReason.WRONG_TYPE, id="no-spec"),
        pytest.param({"metadata": {"namespace": "default", "name": "web"}, "spec": []}, "spec",
                     "default", "web", RejectReason.WRONG_TYPE, id="spec-not-an-object"),
        pytest.param(service(ports={"port": 80}), "spec.ports", "default", "web",
                     RejectReason.WRONG_TYPE, id="ports-not-a-list"),
    ],
)
def test_unusable_objects_are_skipped_whole_with_one_rejection_naming_them(
    obj: Any, field: str, namespace: str, name: str, code: RejectReason
) -> None:
    parsed = parse_service(obj)
    assert parsed.value is None
    assert parsed.rejections == (
        Rejection("Service", namespace, name, field, parsed.rejections[0].reason, True, code),
    )
    assert parsed.rejections[0].reason


def test_values_too_large_to_print_are_still_reported() -> None:
    parsed = parse_service(service(ports=[{"port": 10**5000}]))
    assert rejected(parsed) == ("spec.ports[0].port", RejectReason.INVALID_PORT)
    assert "unprintable int" in parsed.rejections[0].reason
