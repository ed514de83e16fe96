"""Kubernetes Service behaviour end to end, in both proxy modes: the dev cluster with kproxy
on each node, objects changed through the dev API server as controllers change them, real
connections from pods, nodes and the outside client, and the endpoint that answered (with
the source address it saw) as the verdict.

Where the modes differ by design it is said in the test: in userspace mode the endpoint sees
the node's address (kproxy itself connects to it), in iptables mode the client's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e_cluster import Case, E2eCluster
from flows import REFUSED, Flow, addresses_of, host_named, node_ip
from kproxy_nodes import eventually

from kproxy.devcluster.lab import Lab
from kproxy.devcluster.loadgen import LoadGenerator, LoadReport
from kproxy.devcluster.probe import ProbeResult
from kproxy.devcluster.workload import ContainerPort

pytestmark = pytest.mark.kernel

HTTP = ContainerPort("http", 8080)
ALT = ContainerPort("alt", 8081)
GONE = ("timeout", "unreachable")  # nothing forwards, nothing rejects
# In userspace mode a service without endpoints is a listener that closes at once.
USERSPACE_REFUSALS = ("refused", "reset", "closed")
EXTERNAL_IP = "192.0.2.10"
UDP_SOURCE_PORT = 40053
UDP_RECOVERY_LIMIT = 10.0  # the bound for a replaced UDP backend
USERSPACE_RESTART_LIMIT = 3.0  # the bound for userspace mode after a restart
ROLL_RATE = 100.0
ROLL_SECONDS = 20.0


def port(name: str = "http", number: int = 80, target: int = 8080,
         protocol: str = "TCP") -> dict[str, Any]:
    return {"name": name, "port": number, "targetPort": target, "protocol": protocol}


def cluster_ip(service: dict[str, Any]) -> str:
    address = service["spec"].get("clusterIP")
    assert address and address != "None", f"no cluster IP: {service}"
    return str(address)


def node_port(service: dict[str, Any], index: int = 0) -> int:
    return int(service["spec"]["ports"][index]["nodePort"])


# --- checks ------------------------------------------------------------------------------------


def answered(cluster: E2eCluster, source: str, address: str | Callable[[Lab], str],
             pods: frozenset[str], *, number: int = 80, proto: str = "http",
             source_seen: Callable[[Lab], frozenset[str]] | None = None,
             server_port: int | None = None, limit: float = 15.0) -> None:
    """Connections from ``source`` are answered by ``pods`` and every one of them answers."""
    cluster.reaches(Flow(f"{source} -> {sorted(pods)}", source, proto, address, number, pods,
                         attempts=12 if len(pods) > 1 else 4, must_spread=True,
                         source_seen=source_seen, server_port=server_port),
                    f"answered by {sorted(pods)}", limit)


def failing_problems(cluster: E2eCluster, source: str, address: str, number: int,
                     kinds: tuple[str, ...], proto: str = "tcp") -> list[str]:
    results = host_named(cluster.lab, source).probe(proto, address, number, count=3, timeout=0.5)
    return [f"{source} -> {address}:{number}: expected one of {kinds}, got "
            f"{result.pod if result.ok else result.error}"
            for result in results if result.ok or result.error not in kinds]


def refused(cluster: E2eCluster, source: str, address: str, number: int = 80) -> None:
    """A service without endpoints: the connection fails at once, it does not hang."""
    if cluster.mode == "iptables":
        cluster.reaches(Flow(f"{source} refused", source, "tcp", address, number,
                             outcome=REFUSED, attempts=3), f"{address} refused")
        return
    eventually(lambda: failing_problems(cluster, source, address, number, USERSPACE_REFUSALS),
               f"{address} refused", 15.0)


def silent(cluster: E2eCluster, source: str, address: str, number: int = 80,
           proto: str = "tcp") -> None:
    """Nothing forwards (no rule, no listener) and nothing rejects."""
    eventually(lambda: failing_problems(cluster, source, address, number, GONE, proto),
               f"{address}:{number} silent from {source}", 15.0)


def port_closed(cluster: E2eCluster, source: str, address: str, number: int) -> None:
    """A node port nobody serves: the node's own stack refuses it (or it is dropped)."""
    eventually(lambda: failing_problems(cluster, source, address, number,
                                        ("refused", *GONE)),
               f"{address}:{number} not served from {source}", 15.0)


def not_answered(cluster: E2eCluster, source: str, address: str, number: int) -> None:
    """No endpoint answers (iptables mode drops: a timeout; userspace: any failure)."""
    kinds = GONE if cluster.mode == "iptables" else (*GONE, *USERSPACE_REFUSALS)
    eventually(lambda: failing_problems(cluster, source, address, number, kinds),
               f"{address}:{number} not answered from {source}", 15.0)


def client_sources(cluster: E2eCluster, client: str, node: str) -> Callable[[Lab], frozenset[str]]:
    """What an endpoint sees as source: the client pod itself, or (userspace) its node."""
    return addresses_of(client if cluster.mode == "iptables" else node)


def no_failures(report: LoadReport, cluster: E2eCluster, what: str) -> None:
    print(f"\n[{cluster.mode}] {what}: {report.summary()}")
    assert report.failed == 0, (f"{what}: {report.failed} of {report.sent} requests failed "
                                f"{report.failures}: {report.samples}\n{cluster.diagnostics()}")


# --- endpoints ---------------------------------------------------------------------------------


def test_endpoints_followed_from_0_to_2_and_back(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("follow", [port()]))
    web = case.workload("follow", 0, grace=0.5)
    web.publish()
    refused(cluster, "client-1", address)
    web.scale(1)
    answered(cluster, "client-1", address, web.pod_names())
    web.scale(2)
    for client in ("client-1", "client-2"):
        answered(cluster, client, address, web.pod_names())
    web.scale(1)
    answered(cluster, "client-2", address, web.pod_names())
    web.scale(0)
    for client in ("client-1", "client-2"):
        refused(cluster, client, address)


def test_multiport_service_reaches_each_target_port(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("multi", [port(), port("alt", 81, 8081)]))
    web = case.workload("multi", 2, ports=(HTTP, ALT))
    for number, target in ((80, 8080), (81, 8081)):
        answered(cluster, "client-1", address, web.pod_names(), number=number,
                 server_port=target)


def test_ports_added_and_removed(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("ports", [port()]))
    web = case.workload("ports", 2, ports=(HTTP,), listen=(HTTP, ALT))
    answered(cluster, "client-1", address, web.pod_names())
    silent(cluster, "client-1", address, 81)

    case.patch_service("ports", {"spec": {"ports": [port(), port("alt", 81, 8081)]}})
    web.set_ports((HTTP, ALT))
    answered(cluster, "client-1", address, web.pod_names(), number=81, server_port=8081)
    answered(cluster, "client-1", address, web.pod_names(), number=80, server_port=8080)

    case.patch_service("ports", {"spec": {"ports": [port("alt", 81, 8081)]}})
    web.set_ports((ALT,))
    silent(cluster, "client-1", address, 80)
    answered(cluster, "client-2", address, web.pod_names(), number=81, server_port=8081)


def test_source_pod_ip_from_the_same_and_the_other_node(case: Case) -> None:
    """iptables mode: the endpoint sees the client pod's own address, whether it runs on the
    client's node or the other one. userspace mode: it sees the client's node."""
    cluster = case.cluster
    address = cluster_ip(case.service("source", [port()]))
    web = case.workload("source", 2, nodes=[1, 2])
    # One pod on each node: both must answer each client, each seeing the expected source.
    for client, node in (("client-1", "node1"), ("client-2", "node2")):
        answered(cluster, client, address, web.pod_names(),
                 source_seen=client_sources(cluster, client, node))


def test_hairpin_pod_reaches_itself_through_its_service(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("hairpin", [port()]))
    web = case.workload("hairpin", 1, nodes=[1])
    [member] = web.pods
    # The reply must come back through the node, so the pod sees the node's address.
    answered(cluster, member.name, address, frozenset({member.name}),
             source_seen=addresses_of("node1"))


# --- services coming and going -------------------------------------------------------------------


def test_services_up_and_down_leave_the_others_alone(case: Case) -> None:
    cluster = case.cluster
    steady_ip = cluster_ip(case.service("steady", [port()]))
    steady = case.workload("steady", 2, nodes=[1, 2])
    answered(cluster, "client-1", steady_ip, steady.pod_names())
    load = LoadGenerator(cluster.client(1), steady_ip, 80, rate=50, duration=6)
    load.wait_started()
    gone = []
    for index in range(3):
        name = f"churn-{index}"
        address = cluster_ip(case.service(name, [port()]))
        churn = case.workload(name, 1, nodes=[2 - index % 2])
        answered(cluster, "client-1", address, churn.pod_names())
        churn.delete()
        case.delete_service(name)
        gone.append(address)
    report = load.wait()
    no_failures(report, cluster, "steady service while others came and went")
    assert set(report.by_pod) == steady.pod_names(), report.by_pod
    for address in gone:
        silent(cluster, "client-2", address)


def test_service_deleted_and_recreated(case: Case) -> None:
    cluster = case.cluster
    first_ip = cluster_ip(case.service("again", [port()]))
    web = case.workload("again", 2)
    answered(cluster, "client-1", first_ip, web.pod_names())
    case.delete_service("again")
    web.unpublish()
    silent(cluster, "client-1", first_ip)
    second_ip = cluster_ip(case.service("again", [port()]))
    web.publish()
    for client in ("client-1", "client-2"):
        answered(cluster, client, second_ip, web.pod_names())
    if second_ip != first_ip:
        silent(cluster, "client-1", first_ip)


def test_no_endpoints_is_refused_fast(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("empty", [port()]))
    for client in ("client-1", "client-2"):
        refused(cluster, client, address)
    # Refused, not left hanging: every attempt ended well before its timeout.
    host = cluster.client(1)
    results = host.probe("tcp", address, 80, count=3, timeout=3.0)
    assert all(not result.ok and result.error != "timeout" for result in results), results


# --- restarts ----------------------------------------------------------------------------------


def test_kproxy_restarted_on_a_node(case: Case) -> None:
    """iptables mode: the rules stay while kproxy is down, so not one request fails.
    userspace mode: the relays go with the process; the service is back within 3 s of the
    new process watching the API server."""
    cluster = case.cluster
    address = cluster_ip(case.service("restart", [port()]))
    web = case.workload("restart", 2, nodes=[1, 2])
    answered(cluster, "client-1", address, web.pod_names())
    kproxy = cluster.kproxies[0]  # node1's: where client-1's connections are handled
    if cluster.mode == "iptables":
        load = LoadGenerator(cluster.client(1), address, 80, rate=50, duration=8)
        load.wait_started()
        kproxy.stop()
        kproxy.start()
        kproxy.wait_synced()
        no_failures(load.wait(), cluster, "requests across a kproxy restart")
        return
    kproxy.stop()
    kproxy.start()
    kproxy.wait_for_log("kproxy watching")
    started = time.monotonic()
    answered(cluster, "client-1", address, web.pod_names(), limit=USERSPACE_RESTART_LIMIT)
    print(f"\n[userspace] service back {time.monotonic() - started:.2f}s after the restart")


def test_api_server_restarted(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("before", [port()]))
    web = case.workload("before", 2, nodes=[1, 2])
    answered(cluster, "client-2", address, web.pod_names())
    load = LoadGenerator(cluster.client(2), address, 80, rate=50, duration=5)
    load.wait_started()
    cluster.dev.restart_api_server()
    no_failures(load.wait(), cluster, "an existing service while the API server restarted")
    after_ip = cluster_ip(case.service("after", [port()]))
    later = case.workload("after", 1, nodes=[1])
    for client in ("client-1", "client-2"):
        answered(cluster, client, after_ip, later.pod_names())


# --- node ports, external IPs, types -------------------------------------------------------------


def test_node_port_from_the_other_node_and_from_outside(case: Case) -> None:
    cluster = case.cluster
    service = case.service("np", [port()], type="NodePort")
    web = case.workload("np", 2, nodes=[1, 2])
    number = node_port(service)
    answered(cluster, "node2", node_ip(0), web.pod_names(), number=number)
    for index in (0, 1):
        answered(cluster, "outside", node_ip(index), web.pod_names(), number=number)


def test_external_ips(case: Case) -> None:
    cluster = case.cluster
    outside = cluster.lab.outside
    assert outside is not None
    case.service("ext", [port()], externalIPs=[EXTERNAL_IP])
    web = case.workload("ext", 2, nodes=[1, 2])
    # As a router announcing it would: the external IP is reached through node1.
    outside.ns.ip("route", "add", f"{EXTERNAL_IP}/32", "via", cluster.lab.nodes[0].ip)
    try:
        answered(cluster, "outside", EXTERNAL_IP, web.pod_names())
        answered(cluster, "client-2", EXTERNAL_IP, web.pod_names())
    finally:
        outside.ns.ip("route", "del", f"{EXTERNAL_IP}/32")


def test_type_changes_cluster_ip_node_port_external_name(case: Case) -> None:
    cluster = case.cluster
    first_ip = cluster_ip(case.service("morph", [port()]))
    web = case.workload("morph", 2)
    answered(cluster, "client-1", first_ip, web.pod_names())

    as_node_port = case.patch_service("morph", {"spec": {"type": "NodePort"}})
    number = node_port(as_node_port)
    answered(cluster, "outside", node_ip(1), web.pod_names(), number=number)
    answered(cluster, "client-1", first_ip, web.pod_names())

    case.patch_service("morph", {"spec": {
        "type": "ExternalName", "externalName": "web.example.com", "clusterIP": None,
        "clusterIPs": None}})
    # Not proxied at all any more: neither its cluster IP nor its node port.
    silent(cluster, "client-1", first_ip)
    port_closed(cluster, "outside", cluster.lab.nodes[1].ip, number)

    again = case.patch_service("morph", {"spec": {"type": "ClusterIP", "externalName": None}})
    answered(cluster, "client-2", cluster_ip(again), web.pod_names())
    back_to_node_port = case.patch_service("morph", {"spec": {"type": "NodePort"}})
    answered(cluster, "outside", node_ip(0), web.pod_names(),
             number=node_port(back_to_node_port))
    case.patch_service("morph", {"spec": {"type": "ClusterIP"}})
    port_closed(cluster, "outside", cluster.lab.nodes[0].ip, node_port(back_to_node_port))
    answered(cluster, "client-2", cluster_ip(again), web.pod_names())


def test_same_port_number_over_tcp_and_udp(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("dns", [port("dns-tcp", 53, 8080, "TCP"),
                                             port("dns", 53, 8080, "UDP")]))
    web = case.workload("dns", 2, ports=(ContainerPort("dns-tcp", 8080, "TCP"),
                                         ContainerPort("dns", 8080, "UDP")))
    for proto in ("tcp", "udp"):
        answered(cluster, "client-1", address, web.pod_names(), number=53, proto=proto)


# --- session affinity --------------------------------------------------------------------------


def sticky(cluster: E2eCluster, client: str, address: str, pods: frozenset[str]) -> str:
    """Every new connection from ``client`` goes to one pod; returns it."""
    flow = Flow(f"{client} sticky", client, "http", address, 80, pods, attempts=10,
                sticky=True)
    cluster.reaches(flow, "one pod keeps answering")
    [result] = cluster.lab.pod(client).probe("http", address, 80)
    return str(result.pod)


def test_session_affinity_client_ip(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("sticky", [port()]))
    web = case.workload("sticky", 2, nodes=[1, 2])
    pods = web.pod_names()
    answered(cluster, "client-1", address, pods)

    timeout = 1
    case.patch_service("sticky", {"spec": {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}}}})
    pinned = sticky(cluster, "client-1", address, pods)
    sticky(cluster, "client-2", address, pods)

    # Idle for longer than the timeout, the next connection is balanced afresh: within a
    # few rounds (each a coin toss between two pods) the other pod answers.
    seen: list[str | None] = []
    for _ in range(12):
        time.sleep(timeout + 0.5)
        [result] = cluster.client(1).probe("http", address, 80)
        assert result.ok, result
        seen.append(result.pod)
        if result.pod != pinned:
            break
    assert seen[-1] != pinned, f"affinity never timed out: {seen}"

    case.patch_service("sticky", {"spec": {"sessionAffinity": "None",
                                           "sessionAffinityConfig": None}})
    answered(cluster, "client-1", address, pods)
    case.patch_service("sticky", {"spec": {"sessionAffinity": "ClientIP"}})
    sticky(cluster, "client-1", address, pods)


# --- labels ------------------------------------------------------------------------------------


def test_service_proxy_name_and_headless_labels(case: Case) -> None:
    """kproxy without --service-proxy-name ignores Services labelled for another proxy, and
    headless-labelled ones; taking the label off (or putting it on) takes effect."""
    cluster = case.cluster
    proxy_label = "service.kubernetes.io/service-proxy-name"
    headless_label = "service.kubernetes.io/headless"
    labelled = cluster_ip(case.service("other-proxy", [port()], labels={proxy_label: "other"}))
    web = case.workload("other-proxy", 1)
    # A service created afterwards answering shows kproxy has seen the labelled one.
    control = cluster_ip(case.service("control", [port()]))
    control_web = case.workload("control", 1)
    answered(cluster, "client-1", control, control_web.pod_names())
    silent(cluster, "client-1", labelled)

    case.patch_service("other-proxy", {"metadata": {"labels": {proxy_label: None}}})
    answered(cluster, "client-1", labelled, web.pod_names())
    case.patch_service("other-proxy", {"metadata": {"labels": {headless_label: ""}}})
    silent(cluster, "client-1", labelled)
    case.patch_service("other-proxy", {"metadata": {"labels": {headless_label: None}}})
    answered(cluster, "client-2", labelled, web.pod_names())
    case.patch_service("other-proxy", {"metadata": {"labels": {proxy_label: "other"}}})
    silent(cluster, "client-2", labelled)
    answered(cluster, "client-2", control, control_web.pod_names())


# --- traffic policies --------------------------------------------------------------------------


def test_internal_traffic_policy_local(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("itp", [port()], internalTrafficPolicy="Local"))
    web = case.workload("itp", 2, nodes=[1, 2])
    on_node = {node: frozenset(member.name for member in web.pods
                               if member.pod.node.name == node) for node in ("node1", "node2")}
    answered(cluster, "client-1", address, on_node["node1"])
    answered(cluster, "client-2", address, on_node["node2"])
    [node2_pod] = on_node["node2"]
    web.remove(node2_pod)
    not_answered(cluster, "client-2", address, 80)
    answered(cluster, "client-1", address, on_node["node1"])


def health_check(cluster: E2eCluster, node_index: int, number: int) -> ProbeResult:
    outside = cluster.lab.outside
    assert outside is not None
    [result] = outside.probe("http", cluster.lab.nodes[node_index].ip, number)
    return result


def health_statuses(cluster: E2eCluster, number: int, expected: tuple[int, int]
                    ) -> list[str]:
    problems = []
    for index, status in enumerate(expected):
        result = health_check(cluster, index, number)
        if not result.ok or result.status != status:
            problems.append(f"node{index + 1} health check: expected {status}, got "
                            f"{result.status if result.ok else result.error} {result.body}")
    return problems


def test_external_traffic_policy_local_with_health_check_and_terminating_fallback(
        case: Case) -> None:
    cluster = case.cluster
    service = case.service("etp", [port()], type="LoadBalancer", externalTrafficPolicy="Local")
    health_port = int(service["spec"]["healthCheckNodePort"])
    number = node_port(service)
    web = case.workload("etp", 1, nodes=[1])
    [member] = web.pods
    # iptables mode keeps the client's address (no masquerade for Local); userspace cannot.
    seen = addresses_of("outside") if cluster.mode == "iptables" else addresses_of("node1")
    answered(cluster, "outside", node_ip(0), frozenset({member.name}), number=number,
             source_seen=seen)
    not_answered(cluster, "outside", cluster.lab.nodes[1].ip, number)
    eventually(lambda: health_statuses(cluster, health_port, (200, 503)),
               "health check node port: 200 where the endpoint is, 503 elsewhere", 15.0)

    # Its only endpoint terminating but still serving: traffic falls back to it, while
    # the health check already steers load balancers away.
    web.begin_termination(member.name)
    eventually(lambda: health_statuses(cluster, health_port, (503, 503)),
               "health check 503 with only a terminating endpoint", 15.0)
    answered(cluster, "outside", node_ip(0), frozenset({member.name}), number=number)


def test_replaced_udp_backend_recovers_under_a_fixed_source_port(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("resolver", [port("dns", 53, 8080, "UDP")]))
    udp = ContainerPort("dns", 8080, "UDP")
    web = case.workload("resolver", 1, ports=(udp,), nodes=[2])
    [old] = web.pods
    client = cluster.client(1)

    def answers_from(pods: frozenset[str]) -> list[str]:
        results = client.probe("udp", address, 53, timeout=0.7, source_port=UDP_SOURCE_PORT)
        return [f"udp from :{UDP_SOURCE_PORT} answered by "
                f"{result.pod if result.ok else result.error}, expected one of {sorted(pods)}"
                for result in results if not result.ok or result.pod not in pods]

    eventually(lambda: answers_from(frozenset({old.name})), "udp answered", 15.0)
    [new] = web.deploy(1, "v2", nodes=[2])
    # The replacement serves (new flows from the client's node reach both) before the old
    # backend goes away, as in a rollout.
    answered(cluster, "client-1", address, web.pod_names(), number=53, proto="udp")
    web.remove(old.name)
    eventually(lambda: answers_from(frozenset({new.name})),
               "udp from the same source port answered by the new backend", UDP_RECOVERY_LIMIT)


def test_publish_not_ready_addresses(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("unready", [port()], publishNotReadyAddresses=True))
    web = case.workload("unready", 2, nodes=[1, 2], publish_not_ready=True)
    unready = sorted(web.pod_names())[0]
    web.set_ready(unready, False)
    endpoints = cluster.api.get("discovery.k8s.io/v1", "EndpointSlice",
                                web.slice_name)["endpoints"]
    assert {(e["targetRef"]["name"], e["conditions"]["ready"], e["conditions"]["serving"])
            for e in endpoints} >= {(unready, True, False)}, endpoints
    answered(cluster, "client-1", address, web.pod_names())


# --- rolling update ----------------------------------------------------------------------------


def test_rolling_update_under_load_has_no_failed_request(case: Case) -> None:
    cluster = case.cluster
    address = cluster_ip(case.service("rolling", [port()]))
    web = case.workload("rolling", 3)
    answered(cluster, "client-1", address, web.pod_names())
    load = LoadGenerator(cluster.client(1), address, 80, rate=ROLL_RATE, duration=ROLL_SECONDS)
    load.wait_started()
    steps: list[str] = []
    web.roll("v2", on_step=steps.append)
    report = load.wait()
    no_failures(report, cluster, f"rolling update v1 -> v2 ({len(steps)} steps)")
    assert report.sent >= ROLL_RATE * ROLL_SECONDS, report.summary()
    assert report.by_version.get("v1", 0) > 0 and report.by_version.get("v2", 0) > 0, (
        report.summary())
    assert {member.version for member in web.pods} == {"v2"} and len(web.pods) == 3
    answered(cluster, "client-2", address, web.pod_names())
