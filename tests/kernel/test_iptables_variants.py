"""iptables mode under other configurations: one programmed lab per configuration variant.

Each test class is one variant: a set of kproxy flags (``--nodeport-addresses``,
``--masquerade-all``, ``--detect-local-mode`` ...), cluster objects (multi-port, SCTP,
LoadBalancer with source ranges, internal/external traffic policy Local, session affinity,
topology hints) and, where needed, lab extras (routes from the outside client, a second
outside address, a sysctl in the node namespaces). The class fixture builds the lab and runs
kproxy on both nodes once per backend (nft, legacy, libiptc), then table-driven rows send real
packets through the rules: which pod answers, on which port, with which source address, or
refused / dropped - and for drops, that kproxy's DROP rule is the one that counted the packet
(a packet that is not NATed would time out as well, by wandering off through the default
route).

kube-proxy 1.33's behaviour is the reference for every row.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flows import (
    REFUSED,
    TIMEOUT,
    Flow,
    addresses_of,
    flow_target,
    judge,
    node_ip,
    probe_flow,
)
from variants_objects import (
    AFFINITY_SECONDS,
    ALT_PORT,
    EXT_IP,
    EXTERNAL_IP,
    HEALTH_CHECK_NODE_PORT,
    ITP_IP,
    ITP_NODE1_IP,
    LB_IP,
    LB_LOCAL_IPS,
    MULTI_IP,
    NODE_PORT,
    SCTP_IP,
    STICKY_IP,
    WEB_IP,
    WEB_PORT,
    ZONAL_IP,
    ZONAL_PARTIAL_IP,
    NodePlace,
    Object,
    Placement,
    PodPlace,
    behaviours,
    local_detection,
    local_load_balancer,
    node_ports,
    object_list,
    source_ranges,
)

from kproxy.devcluster.lab import Lab, Node
from kproxy.iptables.names import hashed_chain_name

pytestmark = pytest.mark.kernel

BACKENDS = ["nft", "legacy", "libiptc"]
CLUSTER_CIDR = "10.244.0.0/16"
OUTSIDE_OUT_OF_RANGE_IP = "172.18.0.101"  # a second outside address, not in the LB ranges
KPROXY_READY_SECONDS = 15.0
INVALID_DROP_RULE = "-A KPROXY-FORWARD -m conntrack --ctstate INVALID -j DROP"
TCP_BE_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"
# Pod traffic enters a lab node's IP layer on the pod bridge cbr0, not on the veth ports
# (veth2, veth3, ...) enslaved to it: iptables' -i sees the bridge, so that is the prefix
# that tells pod traffic apart here ("veth" would match nothing, and every pod would be
# masqueraded - in kube-proxy too). Prefix mode is meant for CNIs without a bridge.
LAB_POD_INTERFACE_PREFIX = "cbr"


def kernel_has_sctp() -> bool:
    """Whether this kernel can open SCTP sockets (only a socket: nothing is configured)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


SCTP = kernel_has_sctp()
NO_SCTP = "this kernel has no SCTP sockets (CONFIG_IP_SCTP off or module missing)"


# --- variants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One kproxy configuration and the lab it runs in (two nodes and the outside client)."""

    name: str
    flags: tuple[str, ...]
    objects: Callable[[Placement], list[Object]]
    pods: tuple[tuple[str, int], ...] = (("web-1", 1), ("web-2", 2), ("client-1", 1),
                                        ("client-2", 2))
    servers: tuple[str, ...] = ("web-1", "web-2")
    # Routes the network (not kproxy) provides: address -> index of the node it goes to.
    outside_routes: tuple[tuple[str, int], ...] = ()
    outside_extra_ips: tuple[str, ...] = ()
    node_sysctls: Mapping[str, int] = field(default_factory=dict)
    long_running: bool = False  # `kproxy run` stays up (health check servers) instead of --once
    # For a long-running kproxy: returns once it has programmed both nodes.
    wait_ready: Callable[[Lab], None] | None = None


@dataclass(frozen=True)
class Programmed:
    lab: Lab
    backend: str
    variant: Variant


DEFAULTS = Variant(
    "defaults", (f"--cluster-cidr={CLUSTER_CIDR}",),
    behaviours,
    # A new namespace inherits the host's IPv4 conf/all values: start from 0 to see kproxy
    # turn it on.
    node_sysctls={ROUTE_LOCALNET: 0},
)
SOURCE_RANGES = Variant(
    "source-ranges", (f"--cluster-cidr={CLUSTER_CIDR}",), source_ranges,
    pods=(("web-1", 1), ("web-2", 2), ("client-2", 2)),
    outside_routes=((LB_IP, 2),), outside_extra_ips=(OUTSIDE_OUT_OF_RANGE_IP,),
)
NODEPORT_CIDR = Variant(
    "nodeport-cidr", (f"--cluster-cidr={CLUSTER_CIDR}", "--nodeport-addresses=172.18.0.11/32"),
    node_ports, pods=(("web-1", 1), ("web-2", 2), ("client-1", 1)),
)
NODEPORT_PRIMARY = Variant(
    "nodeport-primary", (f"--cluster-cidr={CLUSTER_CIDR}", "--nodeport-addresses=primary"),
    node_ports, pods=(("web-1", 1), ("web-2", 2), ("client-1", 1)),
)
MASQUERADE_ALL = Variant(
    "masquerade-all", (f"--cluster-cidr={CLUSTER_CIDR}", "--masquerade-all",
                       "--iptables-localhost-nodeports=false"),
    node_ports, node_sysctls={ROUTE_LOCALNET: 0},
)
_DETECTION_ROUTES = ((EXTERNAL_IP, 2), (EXT_IP, 2))
_DETECTION_PODS = (("web-1", 1), ("web-2", 2), ("client-1", 1))
DETECT_NODE_CIDR = Variant(
    "detect-node-cidr", ("--detect-local-mode=NodeCIDR",), local_detection,
    pods=_DETECTION_PODS, outside_routes=_DETECTION_ROUTES,
)
DETECT_BRIDGE = Variant(
    "detect-bridge", ("--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"),
    local_detection, pods=_DETECTION_PODS, outside_routes=_DETECTION_ROUTES,
)
DETECT_PREFIX = Variant(
    "detect-prefix", ("--detect-local-mode=InterfaceNamePrefix",
                      f"--pod-interface-name-prefix={LAB_POD_INTERFACE_PREFIX}"),
    local_detection, pods=_DETECTION_PODS, outside_routes=_DETECTION_ROUTES,
)
# No --cluster-cidr: the default ClusterCIDR mode has nothing to detect with. This lab also
# sets nf_conntrack_tcp_be_liberal in its node namespaces before kproxy starts.
NO_DETECTION = Variant(
    "no-detection", (), local_detection, pods=_DETECTION_PODS,
    outside_routes=_DETECTION_ROUTES, node_sysctls={TCP_BE_LIBERAL: 1},
)


def health_check_ports_open(lab: Lab) -> None:
    """The health check ports open after the first sync: once both answer, rules are in."""
    answers = health_checks(lab, KPROXY_READY_SECONDS)
    for node, answer in zip(lab.nodes, answers, strict=True):
        if "error" in answer:
            pytest.fail(f"{node.name}: kproxy's health check port never answered: {answer}")


LOCAL_LOAD_BALANCER = Variant(
    "etp-local-lb", (f"--cluster-cidr={CLUSTER_CIDR}",), local_load_balancer,
    pods=(("web-2", 2), ("client-1", 1)), servers=("web-2",),
    outside_routes=((LB_LOCAL_IPS[0], 1), (LB_LOCAL_IPS[1], 2)), long_running=True,
    wait_ready=health_check_ports_open,
)


# --- the programmed lab --------------------------------------------------------------------


def placement_of(lab: Lab) -> Placement:
    return Placement(
        nodes=tuple(NodePlace(node.name, node.ip, node.pod_cidr, f"zone-{node.index}")
                    for node in lab.nodes),
        pods={pod.name: PodPlace(pod.ip, pod.node.name) for pod in lab.pods},
    )


def kproxy_args(variant: Variant, node: Node, objects: Path, backend: str) -> list[str]:
    once = ["--once"] if not variant.long_running else []
    return ["run", "--proxy-mode=iptables", f"--from-file={objects}", *once,
            f"--hostname-override={node.name}", f"--iptables-backend={backend}", "--v=2",
            *variant.flags]


def prepare(lab: Lab, variant: Variant) -> None:
    """Pods, servers, the network's routes and addresses, sysctls in the node namespaces."""
    for pod_name, node_index in variant.pods:
        lab.add_pod(node_index, pod_name)
    lab.start_servers([lab.pod(name) for name in variant.servers], tcp=(WEB_PORT, ALT_PORT),
                      udp=(WEB_PORT, ALT_PORT), sctp=(WEB_PORT,) if SCTP else ())
    outside = lab.outside
    assert outside is not None
    for address, node_index in variant.outside_routes:
        outside.ns.ip("route", "add", f"{address}/32", "via", lab.node(node_index).ip)
    for address in variant.outside_extra_ips:
        outside.ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
    for node in lab.nodes:
        node.ns.sysctls(variant.node_sysctls)


def run_once_on_every_node(lab: Lab, variant: Variant, objects: Path, backend: str) -> None:
    """``kproxy run --once`` on all nodes at the same time; fails the fixture if one fails."""
    running = [
        (node, node.ns.popen_python("kproxy.cli", *kproxy_args(variant, node, objects, backend),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for node in lab.nodes
    ]
    failures = []
    for node, process in running:
        output, _ = process.communicate(timeout=60)
        node.ns.stop(process)
        if process.returncode != 0:
            failures.append(f"kproxy --once failed on {node.name} ({variant.name}, {backend}):\n"
                            f"{output.decode(errors='replace')}")
    if failures:
        pytest.fail("\n".join(failures))


def require_rules(programmed: Programmed) -> None:
    """kproxy said it synced: its IPv4 nat rules must be there (a run that silently skipped
    the family would otherwise show up as a page of unexplained timeouts)."""
    for node in programmed.lab.nodes:
        if "-A KPROXY-SERVICES " not in saved_rules(programmed, node, table="nat"):
            pytest.fail(f"kproxy reported success on {node.name} ({programmed.variant.name}, "
                        f"{programmed.backend}) but its IPv4 nat table has no KPROXY-SERVICES "
                        "rules")


@pytest.fixture(scope="class")
def programmed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Programmed]:
    """The class's variant programmed with the backend of the parameter (one lab per class
    and backend); see :func:`pytest_generate_tests`."""
    variant: Variant = request.cls.VARIANT
    backend: str = request.param
    workdir = tmp_path_factory.mktemp(f"{variant.name}-{backend}")
    with Lab(nodes=2, outside=True) as lab:
        prepare(lab, variant)
        objects = workdir / "objects.json"
        objects.write_text(json.dumps(object_list(variant.objects(placement_of(lab)))))
        if not variant.long_running:
            run_once_on_every_node(lab, variant, objects, backend)
            require_rules(Programmed(lab, backend, variant))
            yield Programmed(lab, backend, variant)
            return
        with ExitStack() as running:
            for node in lab.nodes:
                log = running.enter_context((workdir / f"kproxy-{node.name}.log").open("wb"))
                process = node.ns.popen_python(
                    "kproxy.cli", *kproxy_args(variant, node, objects, backend), stdout=log,
                    stderr=subprocess.STDOUT)
                running.callback(node.ns.stop, process)  # SIGTERM, before its log closes
            assert variant.wait_ready is not None
            try:
                variant.wait_ready(lab)
            except pytest.fail.Exception as failure:
                logs = "\n".join(path.read_text(errors="replace")[-3000:]
                                 for path in sorted(workdir.glob("kproxy-*.log")))
                pytest.fail(f"{failure}\nkproxy logs:\n{logs}")
            require_rules(Programmed(lab, backend, variant))
            yield Programmed(lab, backend, variant)


# --- rows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropRule:
    """The rule on ``node`` whose text holds ``fragment`` must count the probe's packets: the
    proof that kproxy's rule dropped them."""

    node: str
    fragment: str


@dataclass(frozen=True)
class Row(Flow):
    """A :class:`Flow` with more to check."""

    dropped_by: DropRule | None = None
    marks: tuple[Any, ...] = ()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every backend for ``programmed`` (with the class's known failures as strict xfails),
    every row of the class for ``row``."""
    cls = metafunc.cls
    if cls is None:
        return
    if "programmed" in metafunc.fixturenames:
        known: Mapping[str, str] = getattr(cls, "KNOWN_FAILURES", {})
        metafunc.parametrize("programmed", [
            pytest.param(backend, id=backend, marks=(
                pytest.mark.xfail(strict=True, reason=known[backend]),) if backend in known
                else ())
            for backend in BACKENDS], indirect=True, scope="class")
    if "row" in metafunc.fixturenames:
        rows: Sequence[Row] = cls.ROWS
        metafunc.parametrize("row", [pytest.param(row, id=row.name, marks=row.marks)
                                     for row in rows])


def save_command(backend: str) -> str:
    return "iptables-nft-save" if backend == "nft" else "iptables-legacy-save"


def saved_rules(programmed: Programmed, node: Node, *, counters: bool = False,
                table: str | None = None) -> str:
    """``iptables-save`` (IPv4) of the backend's flavour in the node's namespace."""
    argv = [save_command(programmed.backend), *(["-c"] if counters else []),
            *(["-t", table] if table else [])]
    return node.ns.run(argv).stdout


_COUNTED = re.compile(r"^\[(\d+):\d+\] (.*)$")


def rule_packets(programmed: Programmed, rule: DropRule) -> int:
    """Packets counted by the rules of ``rule.node`` whose text holds ``rule.fragment``."""
    total = 0
    node = programmed.lab.node(rule.node)
    for line in saved_rules(programmed, node, counters=True).splitlines():
        match = _COUNTED.match(line)
        if match and rule.fragment in match.group(2):
            total += int(match.group(1))
    return total


def check_row(programmed: Programmed, row: Row) -> list[str]:
    lab = programmed.lab
    destination, where = flow_target(lab, row)
    before = rule_packets(programmed, row.dropped_by) if row.dropped_by else 0
    problems = judge(row, probe_flow(lab, row, destination), lab, where)
    if row.dropped_by:
        after = rule_packets(programmed, row.dropped_by)
        if after <= before:
            problems.append(f"{where}: no rule on {row.dropped_by.node} with "
                            f"{row.dropped_by.fragment!r} counted the packets "
                            f"({before} -> {after})")
    return problems


class _RowTests:
    """Runs every row of ``ROWS`` against the class's programmed ``VARIANT``."""

    VARIANT: Variant
    ROWS: Sequence[Row]

    def test_row(self, programmed: Programmed, row: Row) -> None:
        problems = check_row(programmed, row)
        assert not problems, "\n".join(problems)


def answered(name: str, source: str, proto: str, destination: str | Callable[[Lab], str],
             port: int, pods: Sequence[str], **checks: Any) -> Row:
    return Row(name, source, proto, destination, port, frozenset(pods), **checks)


def unanswered(name: str, source: str, proto: str, destination: str | Callable[[Lab], str],
               port: int, outcome: str, **checks: Any) -> Row:
    # One short attempt: a drop is a drop, and a refusal comes back at once.
    return Row(name, source, proto, destination, port, outcome=outcome, attempts=1,
               timeout=0.5, **checks)


def node_bridge_ip(index: int) -> Callable[[Lab], str]:
    return lambda lab: lab.nodes[index].gateway


BOTH = ("web-1", "web-2")


# --- xt_recent and kernel time -------------------------------------------------------------


@dataclass(frozen=True)
class RecentEntry:
    table: str  # the --name of the list: the endpoint's SEP chain
    last_seen: int  # jiffies
    stamps: int  # connections remembered


_RECENT_LINE = re.compile(
    r"^/proc/net/xt_recent/(?P<table>[^:]+):src=(?P<src>\S+) ttl: \d+ "
    r"last_seen: (?P<last>\d+) oldest_pkt: \d+ (?P<stamps>.*)$")


def recent_entries(node: Node, source: str) -> list[RecentEntry]:
    """The ``recent`` match entries of ``source`` in every list of the node's namespace."""
    done = node.ns.run(["grep", "-r", "src=", "/proc/net/xt_recent"], check=False)
    if done.returncode not in (0, 1):
        pytest.fail(f"cannot read /proc/net/xt_recent in {node.name}: {done.stderr}")
    entries = []
    for line in done.stdout.splitlines():
        match = _RECENT_LINE.match(line)
        if match and match.group("src") == source:
            entries.append(RecentEntry(match.group("table"), int(match.group("last")),
                                       len(match.group("stamps").split(","))))
    return entries


def kernel_hz() -> int | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            for line in config:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=", 1)[1])
    except OSError:
        pass
    return None


def kernel_jiffies() -> int | None:
    try:
        with open("/proc/timer_list") as timers:
            for line in timers:
                if line.startswith("jiffies: "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def wait_until_kernel_time_passes(since_jiffies: int, seconds: int) -> None:
    """A functional wait: until the kernel's clock is ``seconds`` past ``since_jiffies``
    (what xt_recent compares), or - where jiffies cannot be read - a second longer."""
    hz = kernel_hz()
    if hz is None or kernel_jiffies() is None:
        time.sleep(seconds + 1.0)
        return
    deadline = time.monotonic() + seconds + 5.0
    while True:
        now = kernel_jiffies()
        assert now is not None
        if now - since_jiffies > seconds * hz:
            return
        assert time.monotonic() < deadline, "kernel jiffies did not advance"
        time.sleep(0.1)


# --- health check node ports --------------------------------------------------------------


# GET / on PORT of every HOST, retrying refused/unanswered connections until a deadline
# shared by all hosts; one JSON line per host.
HEALTH_GET = """
import http.client, json, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
for host in sys.argv[3:]:
    while True:
        try:
            connection = http.client.HTTPConnection(host, port, timeout=1.0)
            connection.request("GET", "/")
            response = connection.getresponse()
            print(json.dumps({"status": response.status, "body": response.read().decode(),
                              "headers": dict(response.getheaders())}))
            break
        except OSError as error:
            if time.monotonic() > deadline:
                print(json.dumps({"error": str(error)}))
                break
            time.sleep(0.2)
"""


def health_checks(lab: Lab, wait_seconds: float = 2.0) -> list[dict[str, Any]]:
    """Every node's answer on the health check node port, asked from the outside client,
    waiting up to ``wait_seconds`` in all for the ports to open."""
    outside = lab.outside
    assert outside is not None
    done = outside.ns.run([sys.executable, "-c", HEALTH_GET, str(HEALTH_CHECK_NODE_PORT),
                           str(wait_seconds), *(node.ip for node in lab.nodes)],
                          timeout=wait_seconds + 15)
    return [json.loads(line) for line in done.stdout.splitlines()]


def expected_health(local_endpoints: int) -> dict[str, Any]:
    return {"service": {"namespace": "default", "name": "lb-local"},
            "localEndpoints": local_endpoints, "serviceProxyHealthy": True}


# --- 1, 6, 7, 8, 9: the default configuration ------------------------------------------


class TestDefaults(_RowTests):
    VARIANT = DEFAULTS
    ROWS = (
        answered("multi-port: numeric targetPort", "client-1", "http", MULTI_IP, 80, BOTH,
                 server_port=WEB_PORT, source_seen=addresses_of("client-1")),
        answered("multi-port: named targetPort, second port", "client-1", "tcp", MULTI_IP, 90,
                 BOTH, server_port=ALT_PORT),
        answered("multi-port: udp on the same port number as tcp", "client-1", "udp", MULTI_IP,
                 90, BOTH, server_port=ALT_PORT),
        unanswered("multi-port: a port the service lacks is not forwarded", "client-1", "tcp",
                   MULTI_IP, 91, TIMEOUT),
        answered("sctp cluster IP", "client-1", "sctp", SCTP_IP, 80, BOTH,
                 marks=(pytest.mark.skipif(not SCTP, reason=NO_SCTP),)),
        answered("iTP Local: a pod reaches only its node's endpoint", "client-1", "http", ITP_IP,
                 80, ["web-1"], attempts=8, source_seen=addresses_of("client-1")),
        answered("iTP Local: the same from the other node", "client-2", "http", ITP_IP, 80,
                 ["web-2"], attempts=8),
        unanswered("iTP Local: node without local endpoints drops", "client-2", "tcp",
                   ITP_NODE1_IP, 80, TIMEOUT,
                   dropped_by=DropRule("node2", "default/itp-node1:http has no local endpoints")),
        answered("ClientIP affinity: one endpoint for every attempt", "client-1", "http",
                 STICKY_IP, 80, BOTH, attempts=8, sticky=True),
        answered("no affinity: attempts spread", "client-1", "http", WEB_IP, 80, BOTH,
                 attempts=16, must_spread=True, source_seen=addresses_of("client-1")),
        answered("topology hints: zone-1 pod uses the zone-1 endpoint", "client-1", "http",
                 ZONAL_IP, 80, ["web-1"], attempts=8),
        answered("topology hints: zone-2 pod uses the zone-2 endpoint", "client-2", "http",
                 ZONAL_IP, 80, ["web-2"], attempts=8),
        answered("topology hints: one endpoint without hints, all are used", "client-1",
                 "http", ZONAL_PARTIAL_IP, 80, BOTH, attempts=16, must_spread=True),
        answered("localhost NodePort answers by default", "node1", "http", "127.0.0.1",
                 NODE_PORT, BOTH),
    )

    def test_invalid_forwarded_packets_are_dropped(self, programmed: Programmed) -> None:
        for node in programmed.lab.nodes:
            assert node.ns.read_sysctl(TCP_BE_LIBERAL) == "0"
            assert INVALID_DROP_RULE in saved_rules(programmed, node).splitlines()

    def test_localhost_nodeports_enable_route_localnet(self, programmed: Programmed) -> None:
        assert programmed.lab.nodes[0].ns.read_sysctl(ROUTE_LOCALNET) == "1"

    def test_sctp_rules_are_installed(self, programmed: Programmed) -> None:
        # Whether or not the kernel can carry SCTP, the rules must load into the kernel.
        rules = saved_rules(programmed, programmed.lab.nodes[0])
        assert re.search(rf"-d {re.escape(SCTP_IP)}/32 -p sctp .*--dport 80 -j KPROXY-SVC-", rules)

    def test_affinity_expires(self, programmed: Programmed) -> None:
        """While the affinity holds, the client's ``recent`` entry collects one stamp per
        connection; once it is older than timeoutSeconds, the next connection's ``--rcheck
        --reap`` removes it, and whichever endpoint is picked starts a fresh one-stamp entry
        (an entry still in force would have got a fourth stamp instead)."""
        lab = programmed.lab
        node, client = lab.nodes[1], lab.pod("client-2")
        results = client.probe("http", STICKY_IP, 80, count=3, timeout=0.7)
        pods = {result.pod for result in results if result.ok}
        assert all(result.ok for result in results) and len(pods) == 1, results
        [pod] = pods
        expected_list = hashed_chain_name("KPROXY-SEP-", "default/sticky:http", "tcp",
                                          f"{lab.pod(str(pod)).ip}:{WEB_PORT}")
        rules = saved_rules(programmed, node)
        assert (f"--rcheck --seconds {AFFINITY_SECONDS} --reap --name {expected_list}"
                in rules)
        entries = recent_entries(node, client.ip)
        assert [(entry.table, entry.stamps) for entry in entries] == [(expected_list, 3)]
        wait_until_kernel_time_passes(entries[0].last_seen, AFFINITY_SECONDS)
        [after] = client.probe("http", STICKY_IP, 80, timeout=0.7)
        assert after.ok, after
        renewed = recent_entries(node, client.ip)
        assert [entry.stamps for entry in renewed] == [1], renewed


# --- 3: loadBalancerSourceRanges ----------------------------------------------------------


FIREWALL_DROP = DropRule("node2", "default/lb:http traffic not accepted by")


class TestLoadBalancerSourceRanges(_RowTests):
    VARIANT = SOURCE_RANGES
    ROWS = (
        answered("outside client in the ranges", "outside", "http", LB_IP, 80, BOTH,
                 source_seen=addresses_of("node2")),
        unanswered("outside source not in the ranges is dropped", "outside", "tcp", LB_IP, 80,
                   TIMEOUT, source_ip=OUTSIDE_OUT_OF_RANGE_IP,
                   dropped_by=FIREWALL_DROP),
        unanswered("pod source not in the ranges is dropped", "client-2", "tcp", LB_IP, 80,
                   TIMEOUT, dropped_by=FIREWALL_DROP),
        answered("the node itself (its IP in the ranges) reaches its LB IP", "node2", "http",
                 LB_IP, 80, BOTH),
    )

    def test_probe_binds_the_source_ip(self, programmed: Programmed) -> None:
        outside = programmed.lab.outside
        assert outside is not None
        server = outside.start_server(tcp=(WEB_PORT,), udp=())
        try:
            [result] = outside.probe("tcp", outside.ip, WEB_PORT,
                                     source_ip=OUTSIDE_OUT_OF_RANGE_IP)
        finally:
            outside.ns.stop(server)
            outside.server = None
        assert result.ok and result.client_ip == OUTSIDE_OUT_OF_RANGE_IP, result


# --- 2: NodePort addresses, localhost NodePorts, --masquerade-all --------------------------


class TestNodePortCidr(_RowTests):
    """``--nodeport-addresses=172.18.0.11/32``: node1's fabric IP and nothing else."""

    VARIANT = NODEPORT_CIDR
    ROWS = (
        answered("NodePort on node1's fabric IP (in the CIDR)", "outside", "http", node_ip(0),
                 NODE_PORT, BOTH, source_seen=addresses_of("node1")),
        answered("pod to node1's fabric IP", "client-1", "http", node_ip(0), NODE_PORT, BOTH),
        unanswered("not on node1's pod bridge address", "client-1", "tcp", node_bridge_ip(0),
                   NODE_PORT, REFUSED),
        unanswered("not on node2 (no address in the CIDR)", "outside", "tcp", node_ip(1),
                   NODE_PORT, REFUSED),
        unanswered("not on localhost (outside the CIDR)", "node1", "tcp", "127.0.0.1",
                   NODE_PORT, REFUSED),
    )


class TestNodePortPrimary(_RowTests):
    """``--nodeport-addresses=primary``: each node's InternalIP only."""

    VARIANT = NODEPORT_PRIMARY
    ROWS = (
        answered("NodePort on node1's primary IP", "outside", "http", node_ip(0), NODE_PORT,
                 BOTH),
        answered("NodePort on node2's primary IP", "outside", "http", node_ip(1), NODE_PORT,
                 BOTH),
        unanswered("not on node1's pod bridge address", "client-1", "tcp", node_bridge_ip(0),
                   NODE_PORT, REFUSED),
        unanswered("not on localhost", "node1", "tcp", "127.0.0.1", NODE_PORT, REFUSED),
    )


class TestMasqueradeAll(_RowTests):
    """``--masquerade-all`` and ``--iptables-localhost-nodeports=false``."""

    VARIANT = MASQUERADE_ALL
    ROWS = (
        answered("pod to cluster IP is masqueraded", "client-1", "http", WEB_IP, 80, BOTH,
                 attempts=8, source_seen=addresses_of("node1")),
        answered("the other node's pod too", "client-2", "http", WEB_IP, 80, BOTH,
                 source_seen=addresses_of("node2")),
        unanswered("localhost NodePort is refused", "node1", "tcp", "127.0.0.1", NODE_PORT,
                   REFUSED),
        answered("the node's own IP still serves the NodePort", "node1", "http", node_ip(0),
                 NODE_PORT, BOTH),
    )

    def test_route_localnet_is_left_off(self, programmed: Programmed) -> None:
        for node in programmed.lab.nodes:
            assert node.ns.read_sysctl(ROUTE_LOCALNET) == "0"


# --- 4: local traffic detection ------------------------------------------------------------


def detection_rows(detects: bool) -> tuple[Row, ...]:
    """Pods keep their source; outside traffic to an external IP is masqueraded; outside
    traffic to a cluster IP is masqueraded only when pod traffic can be told apart."""
    return (
        answered("pod to cluster IP keeps the pod source", "client-1", "http", WEB_IP, 80, BOTH,
                 source_seen=addresses_of("client-1")),
        answered("outside to external IP is masqueraded", "outside", "http", EXTERNAL_IP, 80,
                 ["web-2"], source_seen=addresses_of("node2")),
        answered("outside to cluster IP is masqueraded" if detects
                 else "outside to cluster IP keeps its source (nothing detects pods)",
                 "outside", "http", EXT_IP, 80, ["web-2"],
                 source_seen=addresses_of("node2" if detects else "outside")),
    )


class TestDetectNodeCidr(_RowTests):
    VARIANT = DETECT_NODE_CIDR
    ROWS = detection_rows(True)


class TestDetectBridgeInterface(_RowTests):
    VARIANT = DETECT_BRIDGE
    ROWS = detection_rows(True)


class TestDetectInterfaceNamePrefix(_RowTests):
    VARIANT = DETECT_PREFIX
    ROWS = detection_rows(True)


class TestNoLocalDetection(_RowTests):
    VARIANT = NO_DETECTION
    ROWS = detection_rows(False)

    def test_invalid_drop_left_out_when_tcp_be_liberal(self, programmed: Programmed) -> None:
        for node in programmed.lab.nodes:
            assert node.ns.read_sysctl(TCP_BE_LIBERAL) == "1"
            rules = saved_rules(programmed, node).splitlines()
            assert INVALID_DROP_RULE not in rules
            assert any(line.startswith("-A KPROXY-FORWARD ") for line in rules)


# --- 5: externalTrafficPolicy Local load balancer, health check node port ------------------


class TestLocalLoadBalancer(_RowTests):
    """LoadBalancer, externalTrafficPolicy Local, endpoint on node2 only; kproxy runs
    long-running (the health check servers are not started by --once). Its first LB IP is
    routed to node1, the second to node2."""

    VARIANT = LOCAL_LOAD_BALANCER
    ROWS = (
        unanswered("LB IP on the node without a local endpoint drops", "outside", "tcp",
                   LB_LOCAL_IPS[0], 80, TIMEOUT,
                   dropped_by=DropRule("node1", "default/lb-local:http has no local endpoints")),
        answered("LB IP on the node with the endpoint keeps the client source", "outside",
                 "http", LB_LOCAL_IPS[1], 80, ["web-2"], source_seen=addresses_of("outside")),
        answered("pod on the endpoint-less node: short-circuited to the cluster endpoints",
                 "client-1", "http", LB_LOCAL_IPS[0], 80, ["web-2"],
                 source_seen=addresses_of("client-1")),
        answered("the endpoint-less node itself: masqueraded to the cluster endpoints",
                 "node1", "http", LB_LOCAL_IPS[0], 80, ["web-2"],
                 source_seen=addresses_of("node1")),
    )

    def test_health_check_without_local_endpoint(self, programmed: Programmed) -> None:
        answer = health_checks(programmed.lab)[0]
        assert answer["status"] == 503
        assert json.loads(answer["body"]) == expected_health(0)
        assert answer["headers"].get("X-Load-Balancing-Endpoint-Weight") == "0"

    def test_health_check_with_local_endpoint(self, programmed: Programmed) -> None:
        answer = health_checks(programmed.lab)[1]
        assert answer["status"] == 200
        assert json.loads(answer["body"]) == expected_health(1)
        assert answer["headers"].get("X-Load-Balancing-Endpoint-Weight") == "1"


def test_rules_stay_in_lab_namespaces() -> None:
    host_rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KPROXY" not in host_rules
