"""Traffic in the lab: pods, nodes and the outside client reach what a routed CNI allows."""

from __future__ import annotations

import socket

import pytest

from kproxy.devcluster.lab import Lab, Pod

pytestmark = pytest.mark.kernel

PORT = 8080


def _by_name(pods: list[Pod]) -> dict[str, Pod]:
    return {pod.name: pod for pod in pods}


@pytest.mark.parametrize("proto", ["tcp", "http", "udp"])
@pytest.mark.parametrize("target", ["web-1-2", "web-2-1"], ids=["same-node", "cross-node"])
def test_pod_to_pod_sees_the_client_pods_own_address(
        lab_pods: list[Pod], proto: str, target: str) -> None:
    pods = _by_name(lab_pods)
    client, server = pods["web-1-1"], pods[target]
    [result] = client.probe(proto, server.ip, PORT)
    assert result.ok, result
    assert result.pod == target
    assert result.client_ip == client.ip  # no NAT in the lab itself
    assert result.server_ip == server.ip


def test_line_protocol_echoes_the_payload(lab_pods: list[Pod]) -> None:
    pods = _by_name(lab_pods)
    results = pods["web-2-2"].probe("tcp", pods["web-1-2"].ip, PORT, count=3, payload_size=3000)
    assert [r.received_bytes for r in results] == [3000, 3000, 3000]
    assert len({r.client_port for r in results}) == 3  # a new connection per attempt


def test_read_only_client_gets_the_greeting(lab_pods: list[Pod]) -> None:
    pods = _by_name(lab_pods)
    [result] = pods["web-1-1"].probe("tcp", pods["web-2-2"].ip, PORT, payload_size=0)
    assert result.ok, result
    assert (result.pod, result.client_ip) == ("web-2-2", pods["web-1-1"].ip)


def test_udp_reports_the_datagram_size(lab_pods: list[Pod]) -> None:
    pods = _by_name(lab_pods)
    [result] = pods["web-1-1"].probe("udp", pods["web-2-1"].ip, PORT, payload_size=1200)
    assert result.ok, result
    assert result.received_bytes == 1200


def test_fixed_source_port_is_what_the_server_sees(lab_pods: list[Pod]) -> None:
    pods = _by_name(lab_pods)
    results = pods["web-1-1"].probe("http", pods["web-2-1"].ip, PORT, count=2, source_port=40123)
    assert [r.client for r in results] == [f"{pods['web-1-1'].ip}:40123"] * 2


def test_closed_port_is_refused_and_missing_host_times_out(lab_pods: list[Pod],
                                                           lab: Lab) -> None:
    client = _by_name(lab_pods)["web-1-1"]
    [tcp] = client.probe("tcp", lab.node(2).pods[0].ip, 9)
    [udp] = client.probe("udp", lab.node(2).pods[0].ip, 9)
    [silent] = client.probe("tcp", "10.244.2.250", PORT, timeout=0.3)  # no such pod
    assert (tcp.ok, tcp.error) == (False, "refused")
    assert (udp.ok, udp.error) == (False, "refused")
    assert (silent.ok, silent.error) == (False, "timeout")


def test_outside_client_reaches_node_ips_but_not_pods(lab_pods: list[Pod], lab: Lab) -> None:
    assert lab.outside is not None
    node = lab.node(1)
    node.start_server(tcp=[30080], udp=[])
    [to_node] = lab.outside.probe("tcp", node.ip, 30080)
    [to_pod] = lab.outside.probe("tcp", lab_pods[0].ip, PORT, timeout=0.5)
    assert to_node.ok, to_node
    assert (to_node.pod, to_node.client_ip) == ("node1", lab.outside.ip)
    assert (to_pod.ok, to_pod.error) == (False, "unreachable")


def test_nodes_reach_pods_on_other_nodes(lab_pods: list[Pod], lab: Lab) -> None:
    target = lab.node(2).pods[0]
    [result] = lab.node(1).probe("http", target.ip, PORT)
    assert (result.ok, result.status, result.pod) == (True, 200, target.name)
    assert result.client_ip == lab.node(1).ip


def test_pod_reaches_itself(lab_pods: list[Pod]) -> None:
    pod = lab_pods[0]
    [result] = pod.probe("tcp", pod.ip, PORT)
    assert (result.ok, result.pod, result.client_ip) == (True, pod.name, pod.ip)


def test_removed_pod_stops_answering(lab_pods: list[Pod], lab: Lab) -> None:
    pods = _by_name(lab_pods)
    gone = pods["web-2-2"]
    lab.remove_pod(gone)
    [result] = pods["web-1-1"].probe("tcp", gone.ip, PORT, timeout=0.3)
    assert not result.ok
    assert gone not in lab.pods
    replacement = lab.add_pod(2, "web-2-3")
    assert replacement.ip == "10.244.2.4"  # addresses are not reused within a lab


def test_dual_stack_pods_talk_over_ipv6(dual_stack_lab: Lab) -> None:
    client = dual_stack_lab.add_pod(1, "client")
    server = dual_stack_lab.add_pod(2, "server")
    server.start_server()
    assert server.ip6 == "fd00:10:244:2::2"
    assert client.ip6 is not None
    for proto in ("tcp", "http", "udp"):
        [result] = client.probe(proto, server.ip6, PORT)
        assert result.ok, result
        assert (result.pod, result.client_ip) == ("server", client.ip6)
    [v4] = client.probe("udp", server.ip, PORT)
    assert (v4.ok, v4.client_ip) == (True, client.ip)


def test_dual_stack_outside_reaches_node_but_not_pods(dual_stack_lab: Lab) -> None:
    outside = dual_stack_lab.outside
    assert outside is not None and outside.ip6 is not None
    node = dual_stack_lab.node(2)
    assert node.ip6 is not None
    node.start_server(tcp=[30080], udp=[])
    pod = dual_stack_lab.add_pod(node, "web")
    assert pod.ip6 is not None
    [to_node] = outside.probe("tcp", node.ip6, 30080)
    [to_pod] = outside.probe("tcp", pod.ip6, PORT, timeout=0.5)
    assert (to_node.ok, to_node.client_ip) == (True, outside.ip6)
    assert (to_pod.ok, to_pod.error) == (False, "unreachable")


def test_server_bound_to_one_address(lab: Lab) -> None:
    server, client = lab.add_pod(1, "bound"), lab.add_pod(2, "client")
    server.start_server(tcp=[8081], udp=[8081], bind=server.ip)
    for proto in ("tcp", "udp"):
        [result] = client.probe(proto, server.ip, 8081)
        assert (result.ok, result.server) == (True, f"{server.ip}:8081"), result


def test_sctp_is_served_where_the_kernel_has_it(lab: Lab) -> None:
    server, client = lab.add_pod(1, "sctp-server"), lab.add_pod(1, "sctp-client")
    server.start_server(tcp=[], udp=[], sctp=[9000])  # READY either way
    [result] = client.probe("sctp", server.ip, 9000)
    if sctp_supported():
        assert (result.ok, result.pod, result.client_ip) == (True, server.name, client.ip)
    else:
        assert (result.ok, result.error) == (False, "unsupported")


def sctp_supported() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


def test_control_plane_is_reachable_from_nodes_and_pods() -> None:
    with Lab(nodes=2, outside=False, control_plane=True) as lab:
        control = lab.control_plane
        assert control is not None and control.ip == "172.18.0.2"
        control.start_server(tcp=[6443], udp=[])
        pod = lab.add_pod(2, "client")
        for client in (lab.node(1), pod):
            [result] = client.probe("tcp", control.ip, 6443)
            assert (result.ok, result.pod, result.client_ip) == (True, "control-plane", client.ip)


@pytest.mark.parametrize("overlay", ["vxlan", "routes"])
def test_pods_on_different_nodes_talk_over_either_overlay(overlay: str) -> None:
    with Lab(nodes=2, outside=False, overlay=overlay) as lab:
        client, server = lab.add_pod(1, "client"), lab.add_pod(2, "server")
        server.start_server()
        for proto in ("tcp", "udp"):
            # Larger than one packet either way: the pods' MTU fits the overlay.
            [result] = client.probe(proto, server.ip, PORT, payload_size=4000)
            assert (result.ok, result.pod, result.client_ip, result.received_bytes) == (
                True, "server", client.ip, 4000), result
        vxlan = lab.node(1).ns.run(["ip", "-d", "link", "show", "flannel.1"], check=False)
        assert (vxlan.returncode == 0) == (overlay == "vxlan"), vxlan.stdout + vxlan.stderr
        if overlay == "vxlan":
            assert "vxlan id 1 local 172.18.0.11" in vxlan.stdout
            fdb = lab.node(1).ns.run(["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
            assert "0e:6b:70:00:00:02 dst 172.18.0.12" in fdb


def test_vxlan_carries_pod_traffic_encapsulated_on_the_fabric() -> None:
    """With the overlay, the fabric never routes pod addresses: stop VXLAN on node2 (drop
    UDP 8472 there) and pods on node1 no longer reach pods on node2."""
    with Lab(nodes=2, outside=False) as lab:
        client, server = lab.add_pod(1, "client"), lab.add_pod(2, "server")
        server.start_server()
        [before] = client.probe("tcp", server.ip, PORT)
        assert before.ok, before
        lab.node(2).ns.run(["iptables", "-w", "5", "-A", "INPUT", "-p", "udp", "--dport",
                            "8472", "-j", "DROP"])
        [after] = client.probe("tcp", server.ip, PORT, timeout=0.5)
        assert (after.ok, after.error) == (False, "timeout"), after
