"""The lab's pure parts: addressing, ip command lists, the pod server's protocol, probe parsing.

These need neither root nor namespaces.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import struct
from typing import Any

import pytest

from kproxy.devcluster import lab as lab_module
from kproxy.devcluster.lab import NodeAddressing, outside_addresses
from kproxy.devcluster.netns import check_link_name, namespace_name, veth_command
from kproxy.devcluster.podserver import (
    BadRequest,
    StreamMode,
    StreamSession,
    classify,
    destination_from_ancillary,
    format_endpoint,
    parse_request,
)
from kproxy.devcluster.probe import ProbeFailure, ProbeResult, classify_error, split_endpoint

# --- addressing ----------------------------------------------------------------------------


def test_node_addressing_follows_the_kind_like_plan() -> None:
    node = NodeAddressing.for_index(2, ipv6=True)
    assert (node.name, node.ip, node.pod_cidr, node.gateway) == (
        "node2", "172.18.0.12", "10.244.2.0/24", "10.244.2.1")
    assert (node.ip6, node.pod_cidr6, node.gateway6) == (
        "fc00:f853:ccd:e793::12", "fd00:10:244:2::/64", "fd00:10:244:2::1")
    assert node.pod_addresses(2) == ("10.244.2.2", "fd00:10:244:2::2")
    assert node.fabric_port == "n2"


def test_ipv4_only_addressing_has_no_ipv6() -> None:
    node = NodeAddressing.for_index(1, ipv6=False)
    assert (node.ip6, node.pod_cidr6, node.gateway6) == (None, None, None)
    assert node.pod_addresses(3) == ("10.244.1.3", None)
    assert outside_addresses(ipv6=False) == ("172.18.0.100", None)


@pytest.mark.parametrize("host", [0, 1, 255])
def test_pod_host_part_excludes_network_gateway_and_broadcast(host: int) -> None:
    with pytest.raises(ValueError):
        NodeAddressing.for_index(1, ipv6=False).pod_addresses(host)


def test_node_ips_never_collide_with_the_outside_client() -> None:
    with pytest.raises(ValueError):
        NodeAddressing.for_index(lab_module.MAX_NODES + 1, ipv6=False)
    last = NodeAddressing.for_index(lab_module.MAX_NODES, ipv6=False)
    assert last.ip != outside_addresses(ipv6=False)[0]


# --- ip command lists ----------------------------------------------------------------------


def test_routed_node_routes_every_other_pod_cidr_via_that_node() -> None:
    nodes = [NodeAddressing.for_index(i, ipv6=True) for i in (1, 2, 3)]
    commands = lab_module.node_commands(nodes[0], nodes[1:], lab_module.OVERLAY_ROUTES)
    assert "route add 10.244.2.0/24 via 172.18.0.12 dev eth0" in commands
    assert "route add 10.244.3.0/24 via 172.18.0.13 dev eth0" in commands
    assert "route add fd00:10:244:3::/64 via fc00:f853:ccd:e793::13 dev eth0" in commands
    assert not any("10.244.1.0/24 via" in command for command in commands)
    assert "addr add fd00:10:244:1::1/64 dev cbr0 nodad" in commands
    assert "addr add 10.244.1.1/24 dev cbr0" in commands


def test_vxlan_node_reaches_every_other_pod_cidr_over_flannel_1() -> None:
    nodes = [NodeAddressing.for_index(i, ipv6=True) for i in (1, 2, 3)]
    commands = lab_module.node_commands(nodes[0], nodes[1:])
    assert ("link add flannel.1 address 0e:6b:70:00:00:01 type vxlan id 1 local 172.18.0.11 "
            "dev eth0 dstport 8472 nolearning") in commands
    assert "link set flannel.1 mtu 1450 up" in commands
    for peer in (2, 3):
        mac = f"0e:6b:70:00:00:0{peer}"
        assert (f"neigh replace 10.244.{peer}.0 lladdr {mac} dev flannel.1 nud permanent"
                in commands)
        assert f"route add 10.244.{peer}.0/24 via 10.244.{peer}.0 dev flannel.1 onlink" in commands
        assert (f"route add fd00:10:244:{peer}::/64 via fd00:10:244:{peer}:: dev flannel.1 onlink"
                in commands)
    # Nothing goes to another pod CIDR through the fabric directly.
    assert not any(" via 172.18.0." in command for command in commands)
    assert lab_module.vxlan_fdb_commands(nodes[1:]) == [
        "fdb append 0e:6b:70:00:00:02 dev flannel.1 dst 172.18.0.12",
        "fdb append 0e:6b:70:00:00:03 dev flannel.1 dst 172.18.0.13",
    ]


def test_overlay_is_checked_and_sets_the_pod_mtu() -> None:
    with pytest.raises(ValueError, match="overlay must be one of"):
        lab_module.check_overlay("geneve")
    assert lab_module.pod_mtu("vxlan") == 1450
    assert lab_module.pod_mtu("routes") is None
    assert lab_module.pod_port_commands("veth2", "kp-1-ab-pod", 1450)[0] == (
        "link add veth2 mtu 1450 type veth peer name eth0 mtu 1450 netns kp-1-ab-pod")


def test_fabric_veths_are_created_with_their_peer_in_the_other_namespace() -> None:
    commands = lab_module.fabric_commands([("n1", "kp-1-ab-node1")])
    assert "link add n1 type veth peer name eth0 netns kp-1-ab-node1" in commands
    assert "link set n1 master br0 up" in commands


def test_pod_gets_default_routes_via_its_node_bridge() -> None:
    node = NodeAddressing.for_index(1, ipv6=True)
    commands = lab_module.pod_commands(node, "10.244.1.2", "fd00:10:244:1::2")
    assert commands[-2:] == ["route add default via 10.244.1.1",
                             "route add default via fd00:10:244:1::1"]


def test_local_addresses_are_host_addresses_on_the_fabric_link() -> None:
    assert lab_module.local_address_commands(["203.0.113.21", "fd00:203::21"]) == [
        "addr add 203.0.113.21/32 dev eth0",
        "addr add fd00:203::21/128 dev eth0 nodad",
    ]


def test_node_sysctls_enable_forwarding_per_family() -> None:
    v4 = lab_module.node_sysctls(NodeAddressing.for_index(1, ipv6=False))
    assert v4 == {"net.ipv4.ip_forward": 1}
    v6 = lab_module.node_sysctls(NodeAddressing.for_index(1, ipv6=True))
    assert v6["net.ipv6.conf.all.forwarding"] == 1


# --- names ---------------------------------------------------------------------------------


def test_namespace_names_carry_prefix_pid_tag_and_role() -> None:
    assert namespace_name("node1", "a1b2") == f"kp-{os.getpid()}-a1b2-node1"
    assert namespace_name("web") != namespace_name("web")  # fresh random tags


@pytest.mark.parametrize("role", ["", "a b", "x/y"])
def test_namespace_roles_are_restricted(role: str) -> None:
    with pytest.raises(ValueError):
        namespace_name(role)


def test_link_names_respect_ifnamsiz() -> None:
    assert check_link_name("a" * 15) == "a" * 15
    with pytest.raises(ValueError):
        check_link_name("a" * 16)
    with pytest.raises(ValueError):
        veth_command("eth0", "kp-1-ab-x", "peer-name-too-long")


# --- pod server protocol -------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "mode"), [
    (b"GET / HTTP/1.1\r\n", StreamMode.HTTP),
    (b"POST /x", StreamMode.HTTP),
    (b"ping\n", StreamMode.LINES),
    (b"GET\n", StreamMode.LINES),
    (b"GE", None),
    (b"", None),
])
def test_first_bytes_decide_the_stream_mode(prefix: bytes, mode: StreamMode | None) -> None:
    assert classify(prefix) is mode


def test_parse_request_waits_for_the_whole_body() -> None:
    raw = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"
    assert parse_request(raw) is None
    parsed = parse_request(raw + b"cGET")
    assert parsed is not None
    request, used = parsed
    assert (request.method, request.body, used) == ("POST", b"abc", len(raw) + 1)


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive_follows_http_version_and_connection_header(
        head: bytes, keep_alive: bool) -> None:
    parsed = parse_request(head)
    assert parsed is not None
    assert parsed[0].keep_alive is keep_alive


def test_parse_request_rejects_garbage() -> None:
    with pytest.raises(BadRequest):
        parse_request(b"GET /\r\n\r\n")


def test_endpoints_are_formatted_without_ipv4_mapping() -> None:
    assert format_endpoint("::ffff:10.244.1.2", 80) == "10.244.1.2:80"
    assert format_endpoint("fd00::2", 80) == "[fd00::2]:80"
    assert split_endpoint("[fd00::2]:80") == ("fd00::2", 80)
    assert split_endpoint("10.0.0.1:8080") == ("10.0.0.1", 8080)


def test_datagram_destination_comes_from_pktinfo() -> None:
    raw = struct.pack("=16si", socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.5"), 2)
    assert destination_from_ancillary([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, raw)]) == (
        "::ffff:10.0.0.5")
    assert destination_from_ancillary([]) is None


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("::ffff:10.244.1.2", 40000, 0, 0),
                "sockname": ("::ffff:10.244.2.2", 8080, 0, 0)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _session() -> tuple[StreamSession, RecordingTransport]:
    session, transport = StreamSession("web-2-1"), RecordingTransport()
    session.connection_made(transport)
    return session, transport


async def test_http_keep_alive_then_connection_close() -> None:
    session, transport = _session()
    session.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nCon")
    session.data_received(b"nection: close\r\n\r\n")
    responses = bytes(transport.sent).split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(responses) == 2
    assert b"Connection: keep-alive" in responses[0]
    assert b"Connection: close" in responses[1]
    body = json.loads(responses[1].split(b"\r\n\r\n", 1)[1])
    assert body == {"pod": "web-2-1", "client": "10.244.1.2:40000",
                    "server": "10.244.2.2:8080", "bytes": 0}
    assert transport.closed
    session.connection_lost(None)


async def test_line_protocol_answers_every_line_and_a_last_partial_one() -> None:
    session, transport = _session()
    session.data_received(b"one\r\ntw")
    session.data_received(b"o\nthree")
    assert session.eof_received() is False
    answers = [json.loads(line) for line in bytes(transport.sent).splitlines()]
    assert [item["echo"] for item in answers] == ["one", "two", "three"]
    assert {item["pod"] for item in answers} == {"web-2-1"}
    session.connection_lost(None)


async def test_bad_http_request_gets_400_and_close() -> None:
    session, transport = _session()
    session.data_received(b"GET / HTTP/2\r\n\r\n")
    assert bytes(transport.sent).startswith(b"HTTP/1.1 400 ")
    assert transport.closed
    session.connection_lost(None)


# --- probe results -------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "kind"), [
    (ConnectionRefusedError(), "refused"),
    (TimeoutError(), "timeout"),
    (OSError(errno.ENETUNREACH, "no route"), "unreachable"),
    (OSError(errno.EHOSTUNREACH, "no host"), "unreachable"),
    (ConnectionResetError(), "reset"),
    (OSError(errno.EPROTONOSUPPORT, "no sctp"), "unsupported"),
    (ProbeFailure("closed", "eof"), "closed"),
])
def test_socket_errors_are_classified(error: BaseException, kind: str) -> None:
    assert classify_error(error) == kind


def test_probe_result_parses_the_probe_output() -> None:
    result = ProbeResult.from_json({"ok": True, "pod": "a", "client": "[fd00::2]:5",
                                    "server": "10.0.0.1:80", "bytes": 4, "elapsed_ms": 1.5})
    assert (result.client_ip, result.client_port, result.server_ip) == ("fd00::2", 5, "10.0.0.1")
    assert result.received_bytes == 4
    failed = ProbeResult.from_json({"ok": False, "error": "refused"})
    assert (failed.ok, failed.error, failed.client_ip) == (False, "refused", None)
