"""Render and apply times of a kube-proxy-shaped ruleset, per iptables backend.

The ruleset has SERVICES x ENDPOINTS endpoints: per service a SVC chain (a masquerade rule and
one statistic rule per endpoint) and one SEP chain per endpoint (masquerade + DNAT), plus one
KPROXY-SERVICES rule per service; 10,000 x 10 is 110,002 chains and 320,001 rules.

Measured: rendering (pure); and per backend, each in a fresh network namespace of its own
(needs root; nothing touches the host's tables): the first full sync into an empty kernel, a
full sync over the same rules (periodic resync), and a one-chain delta (one service's
endpoints change). Each figure is the median of --runs, or of as many runs as fit into
--budget seconds (at least one); the table says how many.

Run: .venv/bin/python bench/bench_backends.py [--services 10000 --endpoints 10]
     [--backends nft,legacy,libiptc] [--runs 5] [--budget 600]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

from kproxy.config.record import IptablesBackend
from kproxy.iptables.backend import Backend
from kproxy.iptables.cleanup import cleanup
from kproxy.iptables.fake import FakeIptables
from kproxy.iptables.restore import (
    join_payloads,
    parse_save,
    render_delta,
    render_full,
    render_full_replacing,
)
from kproxy.iptables.ruleset import Chain, Ruleset, RulesetDelta, Table, TableRules
from kproxy.model.types import IPFamily

MARK_MASQ = "KPROXY-MARK-MASQ"


class Row(NamedTuple):
    label: str
    seconds: float
    runs: int


def chain_name(kind: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16].upper()
    return f"KPROXY-{kind}-{digest}"


def service_chains(index: int, endpoints: int, generation: int = 0) -> dict[str, Chain]:
    vip = f"10.{96 + index // 65536}.{index // 256 % 256}.{index % 256}"
    comment = f'-m comment --comment "ns-{index % 50}/svc-{index}:http"'
    svc = chain_name("SVC", f"svc-{index}")
    rules = [f"! -s 10.244.0.0/16 -d {vip}/32 -p tcp {comment} -m tcp --dport 80 -j {MARK_MASQ}"]
    chains: dict[str, Chain] = {}
    for endpoint in range(endpoints):
        ip = f"10.{128 + endpoint + generation}.{index // 256 % 256}.{index % 256}"
        sep = chain_name("SEP", f"svc-{index}/{ip}")
        left = endpoints - endpoint
        chance = f" -m statistic --mode random --probability {1 / left:.11f}" if left > 1 else ""
        rules.append(f"{comment}{chance} -j {sep}")
        chains[sep] = Chain(sep, (
            f"-s {ip}/32 {comment} -j {MARK_MASQ}",
            f"-p tcp {comment} -m tcp -j DNAT --to-destination {ip}:8080",
        ))
    chains[svc] = Chain(svc, tuple(rules))
    return chains


def synthetic_ruleset(services: int, endpoints: int) -> Ruleset:
    nat: dict[str, Chain] = {MARK_MASQ: Chain(MARK_MASQ, ("-j MARK --set-xmark 0x4000/0x4000",))}
    portals = []
    for index in range(services):
        nat.update(service_chains(index, endpoints))
        vip = f"10.{96 + index // 65536}.{index // 256 % 256}.{index % 256}"
        portals.append(f'-d {vip}/32 -p tcp -m comment --comment "ns-{index % 50}/svc-{index}:'
                       f'http cluster IP" -m tcp --dport 80 -j {chain_name("SVC", f"svc-{index}")}')
    nat["KPROXY-SERVICES"] = Chain("KPROXY-SERVICES", tuple(portals))
    return Ruleset(IPFamily.IPV4, {Table.NAT: TableRules(Table.NAT, nat)})


def one_service_delta(ruleset: Ruleset, generation: int, endpoints: int) -> RulesetDelta:
    """One endpoint of service 0 replaced: its SVC chain rewritten, a SEP added, one deleted."""
    old = service_chains(0, endpoints, generation)
    new = service_chains(0, endpoints, generation + 1)
    deleted = frozenset(old) - frozenset(new)
    written = tuple(chain for name, chain in new.items() if old.get(name) != chain)
    return RulesetDelta(ruleset.family, write={Table.NAT: written},
                        delete={Table.NAT: deleted})


def measure(action: Callable[[], object], runs: int, budget: float,
            between: Callable[[], object] | None = None) -> tuple[float, int]:
    """Median seconds of ``action`` over ``runs`` runs, fewer if ``budget`` runs out."""
    times: list[float] = []
    spent_since = time.perf_counter()
    while len(times) < runs:
        if between is not None and times:
            between()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
        if time.perf_counter() - spent_since > budget:
            break
    return statistics.median(times), len(times)


# --- in-process figures --------------------------------------------------------------------


def bench_pure(ruleset: Ruleset, endpoints: int, runs: int, budget: float) -> list[Row]:
    payload = render_full(ruleset)[Table.NAT]
    existing = {Table.NAT: set(ruleset.chain_names(Table.NAT)) | {"KPROXY-SVC-STALE"}}
    delta = one_service_delta(ruleset, 0, endpoints)
    rows = [
        Row("render_full", *measure(lambda: render_full(ruleset), runs, budget)),
        Row("render_full_replacing (1 stale chain)",
            *measure(lambda: render_full_replacing(ruleset, existing), runs, budget)),
        Row("render_delta (one endpoint replaced)",
            *measure(lambda: render_delta(delta), runs, budget)),
        Row("parse_save of the full payload", *measure(lambda: parse_save(payload), runs, budget)),
    ]

    def fake_apply() -> None:
        FakeIptables().apply_restore(IPFamily.IPV4, payload)

    rows.append(Row("FakeIptables: apply the full payload", *measure(fake_apply, runs, budget)))
    return rows


# --- per backend, inside a namespace -------------------------------------------------------


def bench_backend_here(kind: str, ruleset: Ruleset, endpoints: int, runs: int,
                       budget: float) -> list[Row]:
    """Runs inside the benchmark's namespace: the backend works on this namespace's tables."""
    backend: Backend
    if kind == "libiptc":
        from kproxy.iptables.libiptc_backend import LibiptcBackend

        backend = LibiptcBackend()
    else:
        from kproxy.iptables.restore_backend import RestoreBackend

        backend = RestoreBackend(IptablesBackend(kind))
    family = IPFamily.IPV4
    payloads = render_full(ruleset)
    generation = [0]

    def full() -> None:
        backend.restore_all(family, payloads)

    def clean() -> None:
        cleanup(backend, [family])

    def delta() -> None:
        step = one_service_delta(ruleset, generation[0], endpoints)
        backend.restore_all(family, render_delta(step))
        generation[0] += 1

    rows = [Row(f"{kind}: full sync into an empty kernel", *measure(full, runs, budget, clean))]
    full()  # measure() left the rules of its last run in place; this is idempotent
    rows.append(Row(f"{kind}: full sync over the same rules", *measure(full, runs, budget)))
    rows.append(Row(f"{kind}: delta, one endpoint replaced", *measure(delta, runs, budget)))
    rows.append(Row(f"{kind}: list_kproxy_chains", *measure(
        lambda: backend.list_kproxy_chains(family, Table.NAT), runs, budget)))
    return rows


def bench_backend_in_namespace(kind: str, args: argparse.Namespace) -> list[Row]:
    from kproxy.devcluster.netns import NetNamespace

    # A lock file of its own: nobody else writes this namespace's tables, and holding the
    # machine-wide xtables lock for minutes would stall every other iptables user.
    with NetNamespace("bench") as namespace, tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "XTABLES_LOCKFILE": os.path.join(directory, "xtables.lock")}
        done = namespace.run(
            [sys.executable, os.path.abspath(__file__), "--inside", kind,
             "--services", str(args.services), "--endpoints", str(args.endpoints),
             "--runs", str(args.runs), "--budget", str(args.budget)],
            timeout=args.timeout, check=False, env=env)
    if done.returncode != 0:
        return [Row(f"{kind}: failed: {done.stderr.strip().splitlines()[-1:]}", float("nan"), 0)]
    return [Row(*row) for row in json.loads(done.stdout)]


# --- output --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--backends", default="nft,legacy,libiptc")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds after which a measurement stops repeating")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0,
                        help="seconds one backend's measurements may take in all")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ruleset = synthetic_ruleset(args.services, args.endpoints)
    if args.inside:
        rows = bench_backend_here(args.inside, ruleset, args.endpoints, args.runs, args.budget)
        print(json.dumps(rows))
        return
    print(f"{args.services} services x {args.endpoints} endpoints: "
          f"{len(ruleset.tables[Table.NAT].chains)} chains, {ruleset.rule_count} rules, "
          f"{len(join_payloads(render_full(ruleset))) / 1e6:.1f} MB of restore input")
    print(f"{'operation':<52} {'seconds':>10} {'runs':>5}")
    rows = bench_pure(ruleset, args.endpoints, args.runs, args.budget)
    for label, seconds, runs in rows:
        print(f"{label:<52} {seconds:>10.3f} {runs:>5}")
    for kind in filter(None, args.backends.split(",")):
        if os.geteuid() != 0:
            print(f"{kind}: skipped (needs root for a network namespace)")
            continue
        try:
            backend_rows = bench_backend_in_namespace(kind, args)
        except subprocess.TimeoutExpired:
            backend_rows = [Row(f"{kind}: over --timeout {args.timeout:.0f}s", float("nan"), 0)]
        for label, seconds, runs in backend_rows:
            print(f"{label:<52} {seconds:>10.3f} {runs:>5}", flush=True)


if __name__ == "__main__":
    main()
