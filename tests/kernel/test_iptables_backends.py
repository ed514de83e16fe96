"""The real backends (iptables-restore nft and legacy, python-iptables) against the kernel.

Every test runs in a fresh network namespace of its own and uses one iptables variant only:
the restore backends run their commands through ``ip netns exec``, the libiptc backend runs
in a child Python process started inside the namespace. Each test has its own xtables lock
file (XTABLES_LOCKFILE): nobody else writes its namespace's tables, and the machine-wide
lock may be held for long by whoever is loading a big ruleset elsewhere.

After every step the kernel's ``iptables-save`` must equal what the in-memory fake shows for
the same payloads, which checks both the backends and the fake (and that the rules are in
iptables-save form).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from kproxy.config.record import IptablesBackend
from kproxy.devcluster.netns import NetNamespace
from kproxy.iptables.backend import Backend, BackendError, RestoreError, detect_mode
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.cleanup import cleanup
from kproxy.iptables.fake import FakeIptables
from kproxy.iptables.kernelstate import KernelTable, scan_save
from kproxy.iptables.restore import (
    ParsedTable,
    TableText,
    join_payloads,
    parse_save,
    render_delta,
    render_full,
    render_full_replacing,
    table_text,
)
from kproxy.iptables.restore_backend import RestoreBackend
from kproxy.iptables.ruleset import BuiltinJump, Chain, Ruleset, RulesetDelta, Table, TableRules
from kproxy.model.types import IPFamily

pytestmark = pytest.mark.kernel

V4, V6 = IPFamily.IPV4, IPFamily.IPV6
BACKENDS = ("nft", "legacy", "libiptc")
COMPARED_TABLES = (Table.NAT, Table.FILTER)


# --- the libiptc backend, run inside the namespace -----------------------------------------

_CHILD = """
import json, sys
from kproxy.iptables.backend import BackendError, RestoreError
from kproxy.iptables.libiptc_backend import LibiptcBackend
from kproxy.iptables.ruleset import BuiltinJump, Table
from kproxy.model.types import IPFamily

request = json.load(sys.stdin)
family = IPFamily(request["family"])
args = request["args"]
try:
    backend = LibiptcBackend()
    method = request["method"]
    if method == "families":
        result = [f.value for f in backend.families()]
    elif method == "restore_all":
        backend.restore_all(family, {Table(t): text for t, text in args["payloads"].items()})
        result = None
    elif method in ("ensure_jumps", "remove_jumps"):
        jumps = [BuiltinJump(Table(t), chain, spec, first) for t, chain, spec, first in args]
        result = getattr(backend, method)(family, jumps)
    elif method == "save":
        result = backend.save(family, Table(args) if args else None)
    elif method == "list_kproxy_chains":
        result = sorted(backend.list_kproxy_chains(family, Table(args)))
    elif method == "chain_exists":
        result = backend.chain_exists(family, Table(args[0]), args[1])
    else:
        raise ValueError(method)
    print(json.dumps({"result": result}))
except RestoreError as exc:
    print(json.dumps({"restore_error": str(exc), "line_number": exc.line_number}))
except BackendError as exc:
    print(json.dumps({"backend_error": str(exc)}))
"""


class LibiptcInNamespace:
    """The backend interface, each call run by a LibiptcBackend in a child in ``namespace``."""

    name = "libiptc"

    def __init__(self, namespace: NetNamespace, lock_file: Path) -> None:
        self._namespace = namespace
        self._env = {**os.environ, "XTABLES_LOCKFILE": str(lock_file)}

    def _call(self, method: str, family: IPFamily, args: Any = None) -> Any:
        request = json.dumps({"method": method, "family": family.value, "args": args})
        done = self._namespace.run([sys.executable, "-c", _CHILD], input=request, timeout=120,
                                   env=self._env)
        answer = json.loads(done.stdout)
        if "restore_error" in answer:
            raise RestoreError(answer["restore_error"], line_number=answer["line_number"])
        if "backend_error" in answer:
            raise BackendError(answer["backend_error"])
        return answer["result"]

    def families(self) -> tuple[IPFamily, ...]:
        return tuple(IPFamily(f) for f in self._call("families", V4))

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        self.restore_all(family, {table: text})

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        self._call("restore_all", family,
                   {"payloads": {table.value: table_text(text)
                                 for table, text in payloads.items()}})

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        return str(self._call("save", family, table.value if table else None))

    def ensure_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        return int(self._call("ensure_jumps", family, _jumps(jumps)))

    def remove_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        return int(self._call("remove_jumps", family, _jumps(jumps)))

    @property
    def chunking(self) -> ChunkPolicy | None:
        return None

    def read_tables(self, family: IPFamily) -> dict[Table, KernelTable]:
        return scan_save(self.save(family))  # what LibiptcBackend.read_tables does

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        return set(self._call("list_kproxy_chains", family, table.value))

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        return bool(self._call("chain_exists", family, [table.value, chain]))


def _jumps(jumps: Sequence[BuiltinJump]) -> list[tuple[str, str, str, bool]]:
    return [(jump.table.value, jump.chain, jump.args, jump.first) for jump in jumps]


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    with NetNamespace("ipt") as created:
        yield created


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "xtables.lock"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, namespace: NetNamespace, lock_file: Path) -> Backend:
    kind: str = request.param
    if kind == "libiptc":
        if importlib.util.find_spec("iptc") is None:
            pytest.skip("python-iptables is not installed (pip install python-iptables)")
        return LibiptcInNamespace(namespace, lock_file)
    prefix = namespace.exec_argv(["env", f"XTABLES_LOCKFILE={lock_file}"])
    return RestoreBackend(IptablesBackend(kind), command_prefix=prefix)


# --- rulesets shaped like kproxy's ---------------------------------------------------------

POD_CIDR = {V4: "10.244.0.0/16", V6: "fd00:10:244::/56"}
HOST = {V4: "/32", V6: "/128"}
REJECT = {V4: "icmp-port-unreachable", V6: "icmp6-port-unreachable"}
RECENT_MASK = {V4: "255.255.255.255", V6: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}
PROBABILITY = {2: "0.50000000000", 3: "0.33333333349", 4: "0.25000000000"}
MASQ = "KPROXY-MARK-MASQ"


def cluster_ip(family: IPFamily, index: int) -> str:
    return f"10.96.0.{index}" if family is V4 else f"fd00:96::{index:x}"


def endpoint_ip(family: IPFamily, service: int, endpoint: int) -> str:
    return f"10.244.{service}.{endpoint + 2}" if family is V4 else (
        f"fd00:10:244:{service:x}::{endpoint + 2:x}")


def service_chains(family: IPFamily, index: int, name: str, endpoints: int,
                   affinity: bool = False) -> dict[str, Chain]:
    comment = f'-m comment --comment "default/{name}:http"'
    svc = f"KPROXY-SVC-{name.upper()}"
    vip = cluster_ip(family, index) + HOST[family]
    rules = [f'! -s {POD_CIDR[family]} -d {vip} -p tcp -m comment --comment '
             f'"default/{name}:http cluster IP" -m tcp --dport 80 -j {MASQ}']
    chains: dict[str, Chain] = {}
    seps = [f"KPROXY-SEP-{name.upper()}{e}" for e in range(endpoints)]
    mask = f"--mask {RECENT_MASK[family]} --rsource"
    if affinity:
        rules += [f"{comment} -m recent --rcheck --seconds 10800 --reap --name {sep} {mask} "
                  f"-j {sep}" for sep in seps]
    for e, sep in enumerate(seps):
        ip = endpoint_ip(family, index, e)
        left = endpoints - e
        chance = ""
        if left > 1:
            chance = f" -m statistic --mode random --probability {PROBABILITY[left]}"
        rules.append(f"{comment}{chance} -j {sep}")
        destination = f"[{ip}]:8080" if family is V6 else f"{ip}:8080"
        recent = f" -m recent --set --name {sep} {mask}" if affinity else ""
        chains[sep] = Chain(sep, (
            f"-s {ip}{HOST[family]} {comment} -j {MASQ}",
            f"-p tcp {comment}{recent} -m tcp -j DNAT --to-destination {destination}",
        ))
    chains[svc] = Chain(svc, tuple(rules))
    return chains


def sample_ruleset(family: IPFamily, services: Sequence[tuple[str, int]]) -> Ruleset:
    nat: dict[str, Chain] = {}
    portals = []
    nodeports = []
    for index, (name, endpoints) in enumerate(services, start=1):
        nat.update(service_chains(family, index, name, endpoints, affinity=name == "b"))
        svc = f"KPROXY-SVC-{name.upper()}"
        vip = cluster_ip(family, index) + HOST[family]
        portals.append(f'-d {vip} -p tcp -m comment --comment "default/{name}:http cluster IP" '
                       f"-m tcp --dport 80 -j {svc}")
        nodeports.append(f'-p tcp -m comment --comment "default/{name}:http" '
                         f"-m tcp --dport {30000 + index} -j {svc}")
    portals.append('-m comment --comment "kproxy service nodeports; NOTE: this must be the last '
                   'rule in this chain" -m addrtype --dst-type LOCAL -j KPROXY-NODEPORTS')
    nat["KPROXY-SERVICES"] = Chain("KPROXY-SERVICES", tuple(portals))
    nat["KPROXY-NODEPORTS"] = Chain("KPROXY-NODEPORTS", tuple(nodeports))
    nat[MASQ] = Chain(MASQ, ("-j MARK --set-xmark 0x4000/0x4000",))
    nat["KPROXY-POSTROUTING"] = Chain("KPROXY-POSTROUTING", (
        "-m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-j MARK --set-xmark 0x4000/0x0",
        '-m comment --comment "kproxy service traffic requiring SNAT" -j MASQUERADE '
        "--random-fully",
    ))
    filter_chains = {
        "KPROXY-FIREWALL": Chain("KPROXY-FIREWALL", (
            "-m conntrack --ctstate INVALID -j DROP",
            '-m comment --comment "kproxy forwarding rules" -m mark --mark 0x4000/0x4000 '
            "-j ACCEPT",
        )),
        "KPROXY-EXTERNAL-SERVICES": Chain("KPROXY-EXTERNAL-SERVICES", (
            f"-d {cluster_ip(family, 99)}{HOST[family]} -p tcp -m comment --comment "
            f'"default/none:http has no endpoints" -m tcp --dport 80 -j REJECT '
            f"--reject-with {REJECT[family]}",
        )),
    }
    portal_comment = '-m comment --comment "kproxy service portals" -j KPROXY-SERVICES'
    jumps = (
        BuiltinJump(Table.NAT, "PREROUTING", portal_comment),
        BuiltinJump(Table.NAT, "OUTPUT", portal_comment),
        BuiltinJump(Table.NAT, "POSTROUTING",
                    '-m comment --comment "kproxy postrouting rules" -j KPROXY-POSTROUTING'),
        BuiltinJump(Table.FILTER, "FORWARD", '-m conntrack --ctstate NEW -m comment --comment '
                    '"kproxy firewall" -j KPROXY-FIREWALL'),
    )
    return Ruleset(family, {Table.NAT: TableRules(Table.NAT, nat),
                            Table.FILTER: TableRules(Table.FILTER, filter_chains)}, jumps)


FOREIGN = (
    "*nat\n:KUBE-SERVICES - [0:0]\n"
    "-A PREROUTING -p tcp -m tcp --dport 2222 -j REDIRECT --to-ports 22\n"
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
    "-A KUBE-SERVICES -p udp -m udp --dport 53 -j RETURN\nCOMMIT\n"
    "*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
)


def kernel_tables(backend: Backend, family: IPFamily) -> dict[Table, ParsedTable]:
    return parse_save(backend.save(family))


def assert_same_as_fake(backend: Backend, fake: FakeIptables, family: IPFamily) -> None:
    kernel = kernel_tables(backend, family)
    for table in COMPARED_TABLES:
        # A table nobody used may be missing (nft) or empty (legacy): the same thing.
        expected = parse_save(fake.save(family, table))[table]
        found = kernel.get(table) or parse_save(FakeIptables().save(family, table))[table]
        assert found == expected, f"{backend.name} {family} {table} differs"


def apply_both(backend: Backend, fake: FakeIptables, family: IPFamily,
               payloads: Mapping[Table, str]) -> None:
    backend.restore_all(family, payloads)
    fake.apply_restore(family, join_payloads(payloads))


# --- tests ---------------------------------------------------------------------------------


# libiptc IPv6 is left out here: each call is a fresh process (and IPv6 a second one), about
# a minute; the IPv6 flow suite programs a dual-stack lab through libiptc instead.
@pytest.mark.parametrize(("backend", "family"),
                         [(kind, family) for kind in BACKENDS for family in (V4, V6)
                          if (kind, family) != ("libiptc", V6)],
                         indirect=["backend"])
def test_full_sync_delta_and_replacing_sync_match_the_fake(backend: Backend,
                                                           family: IPFamily) -> None:
    assert family in backend.families()
    fake = FakeIptables()
    first = sample_ruleset(family, [("a", 2), ("b", 2), ("c", 3)])
    apply_both(backend, fake, family, render_full(first))
    assert backend.ensure_jumps(family, first.jumps) == len(first.jumps)
    for jump in first.jumps:
        fake.ensure_jump(family, jump)
    assert_same_as_fake(backend, fake, family)

    # a scales down to one endpoint, c goes away, d appears.
    second = sample_ruleset(family, [("a", 1), ("b", 2), ("d", 4)])
    nat, old_nat = second.tables[Table.NAT].chains, first.tables[Table.NAT].chains
    written = tuple(chain for name, chain in nat.items() if old_nat.get(name) != chain)
    deleted = frozenset(old_nat) - frozenset(nat)
    assert {"KPROXY-SEP-A1", "KPROXY-SVC-C", "KPROXY-SEP-C2"} <= deleted
    delta = RulesetDelta(family, write={Table.NAT: written}, delete={Table.NAT: deleted})
    apply_both(backend, fake, family, render_delta(delta))
    assert_same_as_fake(backend, fake, family)
    assert backend.list_kproxy_chains(family, Table.NAT) == set(nat)

    # A full sync of the same state changes nothing; one without b removes b's chains.
    third = sample_ruleset(family, [("a", 1), ("d", 4)])
    for planned in (second, third):
        existing = {table: backend.list_kproxy_chains(family, table) for table in COMPARED_TABLES}
        apply_both(backend, fake, family, render_full_replacing(planned, existing))
        assert_same_as_fake(backend, fake, family)
    assert backend.list_kproxy_chains(family, Table.NAT) == set(third.tables[Table.NAT].chains)
    assert not backend.chain_exists(family, Table.NAT, "KPROXY-SEP-B0")
    assert backend.chain_exists(family, Table.NAT, "KPROXY-SEP-D3")


def test_ensure_jumps_is_idempotent_and_puts_jumps_first(backend: Backend) -> None:
    planned = sample_ruleset(V4, [("a", 1)])
    backend.restore_all(V4, render_full(planned))
    backend.restore(V4, Table.NAT, "*nat\n-A PREROUTING -p tcp -m tcp --dport 2222 "
                                   "-j REDIRECT --to-ports 22\nCOMMIT\n")
    assert backend.ensure_jumps(V4, planned.jumps) == 4
    assert backend.ensure_jumps(V4, planned.jumps) == 0
    nat = kernel_tables(backend, V4)[Table.NAT]
    assert nat.chains["PREROUTING"].rules == (
        planned.jumps[0].args, "-p tcp -m tcp --dport 2222 -j REDIRECT --to-ports 22")
    assert nat.chains["OUTPUT"].rules == (planned.jumps[1].args,)
    assert backend.remove_jumps(V4, planned.jumps) == 4
    assert backend.remove_jumps(V4, planned.jumps) == 0
    assert kernel_tables(backend, V4)[Table.FILTER].chains["FORWARD"].rules == ()


@pytest.mark.parametrize("family", [V4, V6])
def test_cleanup_removes_kproxy_and_leaves_everything_else(backend: Backend,
                                                           family: IPFamily) -> None:
    backend.restore_all(family, {Table.NAT: FOREIGN})  # two tables in one payload
    before = kernel_tables(backend, family)
    planned = sample_ruleset(family, [("a", 2), ("b", 1)])
    backend.restore_all(family, render_full(planned))
    backend.ensure_jumps(family, planned.jumps)
    report = cleanup(backend, [family])
    assert report.ok, report.errors
    assert len(report.removed_jumps) == len(planned.jumps)
    assert {name for _, _, name in report.deleted_chains} == (
        planned.chain_names(Table.NAT) | planned.chain_names(Table.FILTER))
    after = kernel_tables(backend, family)
    for table in COMPARED_TABLES:
        assert after[table] == before[table]
    assert cleanup(backend, [family]) == type(report)()  # nothing left to do


REJECTED_BY_THE_KERNEL = [
    "*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j KPROXY-NOPE\nCOMMIT\n",
    "*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j KPROXY-D\n:KPROXY-D - [0:0]\nCOMMIT\n",
    "*nat\n:KPROXY-B - [0:0]\n-X KPROXY-B\nCOMMIT\n",
    "*nat\n-X KPROXY-B\nCOMMIT\n",
    "*nat\n:KPROXY-A - [0:0]\n-X KPROXY-A\nCOMMIT\n",
    "*nat\n-A KPROXY-NOPE -j RETURN\nCOMMIT\n",
    "*nat\n-X KPROXY-NOPE\nCOMMIT\n",
    "*nat\n-D KPROXY-B -j ACCEPT\nCOMMIT\n",
    "*natx\n:KPROXY-C - [0:0]\nCOMMIT\n",
    "*nat\n:KPROXY-C - [0:0]\n",
    "*nat\n:KPROXY-AAAAAAAAAAAAAAAAAAAAAA - [0:0]\nCOMMIT\n",
    "*nat\n:ACCEPT - [0:0]\nCOMMIT\n",
    "*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j PREROUTING\nCOMMIT\n",
    "*nat\n:KPROXY-C - [0:0]\n-A KPROXY-C -j DNAT --to-destination 10.1.1.1:80\nCOMMIT\n",
]
BASE = ("*nat\n:KPROXY-A - [0:0]\n:KPROXY-B - [0:0]\n-A KPROXY-A -j KPROXY-B\n"
        "-A KPROXY-B -j RETURN\n-A PREROUTING -j KPROXY-A\nCOMMIT\n")


def test_the_kernel_and_the_fake_reject_the_same_payloads(backend: Backend) -> None:
    fake = FakeIptables()
    apply_both(backend, fake, V4, {Table.NAT: BASE})
    before = kernel_tables(backend, V4)
    for payload in REJECTED_BY_THE_KERNEL:
        with pytest.raises(RestoreError):
            fake.apply_restore(V4, payload)
        with pytest.raises(RestoreError):
            backend.restore(V4, Table.NAT, payload)
            pytest.fail(f"{backend.name} accepted {payload!r}")
        assert kernel_tables(backend, V4) == before, payload
    assert_same_as_fake(backend, fake, V4)


def test_a_rejected_table_undoes_its_earlier_lines(backend: Backend) -> None:
    backend.restore(V4, Table.NAT, BASE)
    before = kernel_tables(backend, V4)
    with pytest.raises(RestoreError):
        backend.restore(V4, Table.NAT, "*nat\n:KPROXY-A - [0:0]\n:KPROXY-NEW - [0:0]\n"
                                       "-A KPROXY-A -j RETURN\n-X KPROXY-NOPE\nCOMMIT\n")
    assert kernel_tables(backend, V4) == before


# --- detection ---------------------------------------------------------------------------------


def detect_in(namespace: NetNamespace) -> IptablesBackend:
    return detect_mode(IptablesBackend.AUTO, command_prefix=namespace.exec_argv([]))


def iptables(namespace: NetNamespace, lock_file: Path, *argv: str) -> None:
    namespace.run(["env", f"XTABLES_LOCKFILE={lock_file}", *argv, "-w", "5"])


def test_auto_picks_the_variant_holding_kubelets_hint(namespace: NetNamespace,
                                                      lock_file: Path) -> None:
    assert detect_in(namespace) is IptablesBackend.NFT  # nothing anywhere: nft
    iptables(namespace, lock_file, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    assert detect_in(namespace) is IptablesBackend.LEGACY


def test_auto_prefers_nft_when_it_has_the_hint(namespace: NetNamespace, lock_file: Path) -> None:
    iptables(namespace, lock_file, "iptables-legacy", "-A", "INPUT", "-j", "ACCEPT")
    assert detect_in(namespace) is IptablesBackend.LEGACY  # more legacy rules than nft
    iptables(namespace, lock_file, "ip6tables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
    assert detect_in(namespace) is IptablesBackend.NFT
