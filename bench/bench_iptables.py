"""iptables mode at scale: 10,000 ClusterIP services x 10 endpoints (IPv4), against the kernel.

Every figure is measured inside network namespaces of its own (deleted afterwards), with an
xtables lock file of its own: this script re-runs itself there (``ip netns exec NS python
bench_iptables.py --inner ...``), so kproxy runs its backend commands directly, as on a node,
and the host's tables are never touched.

* full (legacy): kproxy's own time (plan with a fresh planner + render), then the tables read
  and the payload (builtin-chain jumps included) applied by iptables-restore into an empty
  namespace; beside it, in the same run, the same payload given to iptables-restore alone.
  Each run is a fresh process in a fresh namespace. Peak RSS (ru_maxrss) of that process.
* nft-full: the same full sync into iptables-nft, which splits it into transactions.
* change (nft and legacy): one endpoint change with all services present, from the
  EndpointSlice handler call (what an informer does on a watch event) to iptables-restore
  having returned, through the real ProxyService, SyncRunner and IptablesProxier (min sync
  period 0), changes spaced apart; then a full resync over the loaded tables, beside what
  checking the builtin-chain jumps one ``iptables -C`` each costs on the same tables.
* connect: first TCP connect (connect + first byte) from a client pod through a node holding
  the rules to a server pod on another node, with 100 services, with all of them (dispatch
  trie), and with all of them in one flat KPROXY-SERVICES chain (a huge leaf size).
* backends: python-iptables (libiptc) against iptables-legacy-restore (the same kernel
  tables), and iptables-nft-restore at a smaller scale.

Targets are printed with pass/FAIL words; nothing asserts.

Run (as root): .venv/bin/python bench/bench_iptables.py [--services N] [--runs R]
    [--nft-runs R] [--changes C] [--change-backends nft,legacy] [--connections K]
    [--small-services M] [--large-libiptc-full] [--parts full,nft-full,change,connect,backends]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iptables_world import SERVICE_PORT, TARGET_PORT, World, bench_config

from kproxy.config.record import IptablesBackend
from kproxy.iptables.backend import RESTORE_ARGS, WAIT_ARGS, Backend, run_command
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.kernelstate import KernelTable
from kproxy.iptables.restore import TableText
from kproxy.iptables.ruleset import BuiltinJump, Table
from kproxy.model.types import IPFamily

THIS_FILE = os.path.abspath(__file__)
FAMILY = IPFamily.IPV4
# The node the rules are for, unless a measurement names another (the lab's nodes).
NODE_NAME = "node1"
NODE_IP = "172.18.0.11"
POD_CIDR = "10.244.1.0/24"
CONNECT_ROUNDS = 4
FLAT_LEAF_SIZE = 1 << 30  # every service rule in the dispatch root: kube-proxy's flat list
INNER_TIMEOUT = 1800.0
NFT_TIMEOUT = 600.0

TARGETS = {
    "own": 1.0,  # seconds, plan + render
    "ratio": 1.2,  # full sync end to end / iptables-restore alone
    "p50": 0.050,
    "p99": 0.150,
    "connect": 1.2,  # first connect with all services / with 100
    "rss": 250.0,  # MB
}


# --- a backend that reports when its calls return -----------------------------------------


class TimedBackend:
    """Delegates to a real backend and records how long each call took (and when it ended).

    ``on_restored`` is called in the calling thread (the proxier's worker thread) with the
    ``perf_counter`` time at which a restore returned: the moment the rules are in the kernel.
    """

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self.seconds: dict[str, list[float]] = {}
        self.on_restored: Callable[[float], None] | None = None

    @property
    def name(self) -> str:
        return self._inner.name

    def _timed(self, label: str, started: float) -> float:
        ended = time.perf_counter()
        self.seconds.setdefault(label, []).append(ended - started)
        return ended

    def take(self) -> dict[str, float]:
        """Seconds per call kind since the last take, and forget them."""
        totals = {label: sum(values) for label, values in self.seconds.items()}
        self.seconds = {}
        return totals

    def families(self) -> tuple[IPFamily, ...]:
        return self._inner.families()

    @property
    def chunking(self) -> ChunkPolicy | None:
        return self._inner.chunking

    def read_tables(self, family: IPFamily) -> dict[Table, KernelTable]:
        started = time.perf_counter()
        tables = self._inner.read_tables(family)
        self._timed("read tables", started)
        return tables

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        self.restore_all(family, {table: text})

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        started = time.perf_counter()
        self._inner.restore_all(family, payloads)
        ended = self._timed("restore", started)
        if self.on_restored is not None:
            self.on_restored(ended)

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        started = time.perf_counter()
        text = self._inner.save(family, table)
        self._timed("save", started)
        return text

    def ensure_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        started = time.perf_counter()
        count = self._inner.ensure_jumps(family, jumps)
        self._timed("jumps", started)
        return count

    def remove_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        return self._inner.remove_jumps(family, jumps)

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        started = time.perf_counter()
        chains = self._inner.list_kproxy_chains(family, table)
        self._timed("list chains", started)
        return chains

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        return self._inner.chain_exists(family, table, chain)


def open_named_backend(kind: str) -> Backend:
    if kind == "libiptc":
        from kproxy.iptables.libiptc_backend import LibiptcBackend

        return LibiptcBackend()
    from kproxy.iptables.restore_backend import RestoreBackend

    return RestoreBackend(IptablesBackend(kind))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def node_name(spec: Mapping[str, Any]) -> str:
    return str(spec.get("node", {}).get("name", NODE_NAME))


def node_world(spec: Mapping[str, Any]) -> World:
    real = {int(index): list(ips) for index, ips in spec.get("real_endpoints", {}).items()}
    node = spec.get("node", {})
    return World(spec["services"], spec["endpoints"], node_name=node_name(spec),
                 node_ip=node.get("ip", NODE_IP), pod_cidr=node.get("pod_cidr", POD_CIDR),
                 real_endpoints=real, service_indices=spec.get("indices"))


# --- measurements that run inside a namespace (--inner) -----------------------------------


def inner_full(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A full sync into this (empty) namespace, step by step as IptablesProxier does it:
    plan with a fresh planner, read the tables, render (jumps included), restore (in chunks
    where the backend asks for them; the chunks are rendered as they are written)."""
    from kproxy.gctuning import configure_gc
    from kproxy.iptables.chunks import render_full_chunked
    from kproxy.iptables.context import plan_context
    from kproxy.iptables.kernelstate import missing_jumps
    from kproxy.iptables.planner import IncrementalPlanner
    from kproxy.iptables.proxier import KPROXY_TABLES
    from kproxy.iptables.restore import join_payloads, render_full_pieces
    from kproxy.state import StateTracker

    configure_gc()  # as `kproxy run` does
    tracker = StateTracker()
    node_world(spec).fill(tracker)
    snapshot = tracker.snapshot()
    config = bench_config(NODE_NAME)
    backend = open_named_backend(spec["backend"])
    context = plan_context(config, snapshot.node, FAMILY)
    started, started_cpu = time.perf_counter(), time.process_time()
    planner = IncrementalPlanner(context)
    ruleset = planner.full(snapshot)
    planned = time.perf_counter()
    kernel = backend.read_tables(FAMILY)
    existing = {table: kernel[table].kproxy_chains if table in kernel else frozenset()
                for table in KPROXY_TABLES}
    jumps = missing_jumps(planner.jumps, kernel)
    read = time.perf_counter()
    chunking = backend.chunking
    chunks = 1
    payload_path = spec.get("payload_path")
    text = ""
    if chunking is not None and chunking.applies(ruleset, existing):
        chunks = 0
        for payloads in render_full_chunked(ruleset, existing, jumps, chunking.chunk_chains):
            backend.restore_all(FAMILY, payloads)
            chunks += 1
        rendered = rendered_cpu = float("nan")
    else:
        pieces = render_full_pieces(ruleset, existing, jumps)
        rendered, rendered_cpu = time.perf_counter(), time.process_time()
        backend.restore_all(FAMILY, pieces)
    restored = time.perf_counter()
    rss_mb = peak_rss_mb()  # before the payload is joined and written out below
    if chunks == 1 and payload_path:
        text = join_payloads(pieces)
        del pieces
    result = {
        "plan": planned - started,
        "read": read - planned,
        "render": rendered - read,
        "own_cpu": rendered_cpu - started_cpu,
        "restore": restored - rendered,
        "end_to_end": restored - started,
        "rss_mb": rss_mb,
        "chains": sum(len(rules.chains) for rules in ruleset.tables.values()),
        "rules": ruleset.rule_count,
        "jumps": len(jumps),
        "chunks": chunks,
    }
    if payload_path:
        result["payload_mb"] = len(text) / 1e6
        Path(payload_path).write_text(text)
    return result


def inner_restore(spec: Mapping[str, Any]) -> dict[str, Any]:
    """iptables-restore alone: the same command line the backend runs, the same payload."""
    from kproxy.iptables.restore_backend import RestoreBackend

    text = Path(spec["payload_path"]).read_text()
    backend = RestoreBackend(IptablesBackend(spec["backend"]))
    argv = [backend.program(FAMILY, "restore"), *WAIT_ARGS, *RESTORE_ARGS]
    started = time.perf_counter()
    result = run_command(argv, text)
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.strip()[:500]}")
    return {"restore": elapsed}


def inner_change(spec: Mapping[str, Any]) -> dict[str, Any]:
    return asyncio.run(_change_latencies(spec))


async def _change_latencies(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The real ProxyService: first full sync, then endpoint changes one at a time."""
    from kproxy.app import ProxyService
    from kproxy.clock import SystemClock
    from kproxy.conntrack import ConntrackCleaner
    from kproxy.gctuning import configure_gc
    from kproxy.healthcheck import ServiceHealthServer
    from kproxy.iptables.proxier import IptablesProxier
    from kproxy.proxier import SnapshotLogger

    configure_gc()
    world = node_world(spec)
    # A periodic full sync landing between two changes would hold one of them back for its
    # whole duration; what a full sync costs is reported on its own (the first sync).
    config = bench_config(NODE_NAME, backend=IptablesBackend(spec["backend"]),
                          min_sync_period=0.0, sync_period=3600.0)
    clock = SystemClock()
    backend = TimedBackend(open_named_backend(spec["backend"]))
    service = ProxyService(config, SnapshotLogger(), clock)
    # What app.make_proxier builds for a long-running iptables proxy, around a timed backend.
    service.proxier = IptablesProxier(
        config, backend, clock=clock,
        conntrack=ConntrackCleaner(families=backend.families(),
                                   clear_services_without_endpoints=True),
        health=ServiceHealthServer(), request_sync=service.runner.request,
    )
    loop = asyncio.get_running_loop()
    restored: list[asyncio.Future[float]] = []

    def on_restored(when: float) -> None:
        if restored:
            future = restored.pop(0)
            loop.call_soon_threadsafe(future.set_result, when)

    backend.on_restored = on_restored
    slices = world.fill(service.tracker)
    runner = asyncio.create_task(service.runner.run_forever())
    first_started = time.perf_counter()
    await _until_synced(service, None)
    first = {"total": time.perf_counter() - first_started, **backend.take()}
    rng = random.Random(7)
    latencies: list[float] = []
    restores: list[float] = []
    for change in range(spec["changes"]):
        await asyncio.sleep(spec["spacing"])
        index = rng.choice(world.indices)
        event = world.changed_slice(index, generation=change + 1)
        future: asyncio.Future[float] = loop.create_future()
        restored.append(future)
        last_success = service.runner.times.last_sync_success
        received = time.perf_counter()
        slices.on_upsert(event)
        in_kernel = await asyncio.wait_for(future, 600)
        latencies.append(in_kernel - received)
        await _until_synced(service, last_success)
        restores.append(backend.take().get("restore", 0.0))
    # A full resync over the loaded tables (as every sync period): one read, one restore
    # with no jump to add; beside it, what checking the jumps one -C at a time costs here.
    last_success = service.runner.times.last_sync_success
    service.proxier.force_full_sync("bench")
    resync_started = time.perf_counter()
    service.runner.request()
    await _until_synced(service, last_success)
    resync = {"total": time.perf_counter() - resync_started, **backend.take()}
    from kproxy.iptables.staticchains import BUILTIN_JUMPS

    checked = time.perf_counter()
    added = await asyncio.to_thread(backend.ensure_jumps, FAMILY, BUILTIN_JUMPS)
    resync["one -C per jump"] = time.perf_counter() - checked
    assert added == 0, "the resync left jumps out"
    service.runner.stop()
    await runner
    await service.proxier.close()
    return {"latencies": latencies, "restores": restores, "first_sync": first,
            "resync": resync, "rss_mb": peak_rss_mb()}


async def _until_synced(service: Any, after: float | None) -> None:
    while True:
        success = service.runner.times.last_sync_success
        if success is not None and success != after:
            return
        if service.last_sync_ok is False:
            raise RuntimeError("sync failed")
        await asyncio.sleep(0.001)


def inner_program(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Replace this node's kproxy rules with a full plan (as a full sync does)."""
    from kproxy.iptables.context import plan_context
    from kproxy.iptables.planner import IncrementalPlanner
    from kproxy.iptables.proxier import KPROXY_TABLES
    from kproxy.iptables.restore import render_full_replacing
    from kproxy.state import StateTracker

    tracker = StateTracker()
    node_world(spec).fill(tracker)
    snapshot = tracker.snapshot()
    backend = open_named_backend(spec["backend"])
    planner = IncrementalPlanner(
        plan_context(bench_config(node_name(spec)), snapshot.node, FAMILY),
        leaf_size=spec["leaf_size"])
    ruleset = planner.full(snapshot)
    existing = {table: backend.list_kproxy_chains(FAMILY, table) for table in KPROXY_TABLES}
    started = time.perf_counter()
    backend.restore_all(FAMILY, render_full_replacing(ruleset, existing))
    backend.ensure_jumps(FAMILY, planner.jumps)
    root = ruleset.tables[Table.NAT].chains["KPROXY-SERVICES"]
    return {"restore": time.perf_counter() - started, "root_rules": len(root.rules)}


def inner_connect(spec: Mapping[str, Any]) -> dict[str, Any]:
    """New TCP connections, round robin over the targets: connect, send a line, first byte."""
    targets = [(str(address), int(port)) for address, port in spec["targets"]]
    samples: dict[str, list[float]] = {address: [] for address, _ in targets}
    for round_number in range(spec["warmup"] + spec["count"]):
        for address, port in targets:
            elapsed = _first_byte(address, port)
            if round_number >= spec["warmup"]:
                samples[address].append(elapsed)
    return {"samples": samples}


def _first_byte(address: str, port: int) -> float:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        started = time.perf_counter()
        sock.connect((address, port))
        sock.sendall(b"ping\n")
        if not sock.recv(1):
            raise RuntimeError(f"{address}:{port} closed without answering")
        return time.perf_counter() - started


def inner_backend(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Backends on the same tables: full syncs into an empty namespace, then one-change syncs
    taking turns, so that every backend sees the same kernel state and the same noise."""
    from kproxy.iptables.cleanup import cleanup
    from kproxy.iptables.context import plan_context
    from kproxy.iptables.planner import IncrementalPlanner
    from kproxy.iptables.restore import render_delta, render_full_replacing
    from kproxy.state import StateTracker

    tracker = StateTracker()
    world = node_world(spec)
    slices = world.fill(tracker)
    snapshot = tracker.snapshot()
    tracker.sync_succeeded(snapshot)
    kinds: list[str] = spec["kinds"]
    backends = {kind: open_named_backend(kind) for kind in kinds}
    planner = IncrementalPlanner(plan_context(bench_config(NODE_NAME), snapshot.node, FAMILY))
    payloads = render_full_replacing(planner.full(snapshot), {})
    full: dict[str, list[float]] = {kind: [] for kind in kinds}
    loaded = False
    for kind in spec["full_kinds"]:
        for _ in range(spec["full_runs"]):
            if loaded:
                cleanup(backends[kind], [FAMILY])
            started = time.perf_counter()
            backends[kind].restore_all(FAMILY, payloads)
            full[kind].append(time.perf_counter() - started)
            loaded = True
    if not loaded:
        backends[kinds[0]].restore_all(FAMILY, payloads)
    rng = random.Random(11)
    changes: dict[str, list[float]] = {kind: [] for kind in kinds}
    for change in range(spec["changes"] * len(kinds)):
        kind = kinds[change % len(kinds)]
        slices.on_upsert(world.changed_slice(rng.choice(world.indices), change + 1))
        snapshot = tracker.snapshot()
        delta = render_delta(planner.partial(snapshot))
        started = time.perf_counter()
        backends[kind].restore_all(FAMILY, delta)
        changes[kind].append(time.perf_counter() - started)
        tracker.sync_succeeded(snapshot)
    return {"full": full, "changes": changes}


INNER: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "full": inner_full,
    "restore": inner_restore,
    "change": inner_change,
    "program": inner_program,
    "connect": inner_connect,
    "backend": inner_backend,
}


# --- the outer side: namespaces, runs, tables ---------------------------------------------


def run_inner(namespace: Any, measurement: str, spec: Mapping[str, Any],
              timeout: float = INNER_TIMEOUT) -> dict[str, Any]:
    """Run one measurement in ``namespace`` (a fresh process) and return what it reported."""
    done = namespace.run([sys.executable, THIS_FILE, "--inner", measurement,
                          "--spec", json.dumps(spec)], check=False, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{measurement} in {namespace.name} failed:\n{tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def in_fresh_namespace(role: str, measurement: str, spec: Mapping[str, Any],
                       timeout: float = INNER_TIMEOUT) -> dict[str, Any]:
    from kproxy.devcluster.netns import NetNamespace

    with NetNamespace(role) as namespace:
        return run_inner(namespace, measurement, spec, timeout)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def seconds_text(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def row(label: str, measured: str, target: str = "", word: str = "") -> None:
    print(f"  {label:<58} {measured:>12}   {target:<10} {word}")


class Report:
    """What each part measured, for the summary at the end."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[str, bool]] = []

    def judge(self, label: str, ok: bool) -> str:
        self.verdicts.append((label, ok))
        return verdict(ok)


def part_full(args: argparse.Namespace, report: Report, workdir: Path) -> dict[str, Any]:
    base = {"services": args.services, "endpoints": args.endpoints, "backend": "legacy"}
    payload_path = str(workdir / "payload.txt")
    fulls: list[dict[str, Any]] = []
    alone: list[float] = []
    for run in range(args.runs):
        # The first run also writes its payload: every run plans the same one.
        spec = {**base, "payload_path": payload_path if run == 0 else ""}
        fulls.append(in_fresh_namespace("full", "full", spec))
        restore_spec = {**base, "payload_path": payload_path}
        alone.append(in_fresh_namespace("restore", "restore", restore_spec)["restore"])
        print(f"    run {run + 1}: end to end {fulls[-1]['end_to_end']:.2f} s, "
              f"restore alone {alone[-1]:.2f} s", flush=True)
    first = fulls[0]
    plan = median([f["plan"] for f in fulls])
    render = median([f["render"] for f in fulls])
    own = median([f["plan"] + f["render"] for f in fulls])
    end_to_end = median([f["end_to_end"] for f in fulls])
    restore_alone = median(alone)
    ratio = end_to_end / restore_alone
    rss = max(f["rss_mb"] for f in fulls)
    print(f"\nfull sync, {args.services:,} services x {args.endpoints} endpoints: "
          f"{first['chains']:,} chains, {first['rules']:,} rules, "
          f"{first['payload_mb']:.1f} MB of restore input; iptables-legacy; "
          f"median of {args.runs} runs (fresh process, fresh namespace each)")
    row("kproxy's own time: plan (fresh planner) + render", seconds_text(own),
        f"<= {TARGETS['own']:.1f} s", report.judge("full sync own time", own <= TARGETS["own"]))
    row("  plan", seconds_text(plan))
    row("  render (builtin-chain jumps included)", seconds_text(render))
    row("read the tables (one iptables-save; not in the target: the kernel's)",
        seconds_text(median([f["read"] for f in fulls])))
    row("  CPU time of plan + render", seconds_text(median([f["own_cpu"] for f in fulls])))
    row("end to end: plan + read + render + iptables-restore", seconds_text(end_to_end))
    row("iptables-restore alone, same payload, same run", seconds_text(restore_alone))
    row("  end to end / restore alone", f"{ratio:.2f}", f"<= {TARGETS['ratio']}",
        report.judge("full sync ratio", ratio <= TARGETS["ratio"]))
    row("peak RSS of the full-sync process (ru_maxrss, max of runs)", f"{rss:.0f} MB",
        f"<= {TARGETS['rss']:.0f} MB", report.judge("peak RSS", rss <= TARGETS["rss"]))
    return {"restore_alone": alone}


def part_nft_full(args: argparse.Namespace) -> None:
    """The same full sync into iptables-nft, in chunks (one transaction would take ~10 min)."""
    spec = {"services": args.services, "endpoints": args.endpoints, "backend": "nft"}
    fulls: list[dict[str, Any]] = []
    for run in range(args.nft_runs):
        fulls.append(in_fresh_namespace("nft-full", "full", spec, NFT_TIMEOUT))
        print(f"    nft run {run + 1}: end to end {fulls[-1]['end_to_end']:.2f} s in "
              f"{fulls[-1]['chunks']} transactions", flush=True)
    print(f"\nfull sync into iptables-nft, same ruleset, chunked (median of {args.nft_runs} "
          f"runs, fresh process and namespace each)")
    row("end to end: plan + read + render + restores", seconds_text(
        median([f["end_to_end"] for f in fulls])), "(no target)")
    row("  of which plan", seconds_text(median([f["plan"] for f in fulls])))
    row("  of which reading the tables (nft list chains + iptables-nft -S)",
        seconds_text(median([f["read"] for f in fulls])))
    row("  transactions", str(fulls[0]["chunks"]))
    row("peak RSS (max of runs)", f"{max(f['rss_mb'] for f in fulls):.0f} MB")


def part_change(args: argparse.Namespace, report: Report) -> None:
    for backend in args.change_backends.split(","):
        _change_on(backend, args, report)


def _change_on(backend: str, args: argparse.Namespace, report: Report) -> None:
    spec = {"services": args.services, "endpoints": args.endpoints, "backend": backend,
            "changes": args.changes, "spacing": args.spacing}
    result = in_fresh_namespace(f"change-{backend}", "change", spec,
                                NFT_TIMEOUT if backend == "nft" else INNER_TIMEOUT)
    latencies = result["latencies"]
    restores = result["restores"]
    own = [latency - restore for latency, restore in zip(latencies, restores, strict=True)]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    first = result["first_sync"]
    print(f"\none endpoint change with {args.services:,} services present: handler call -> "
          f"iptables-restore returned; ProxyService + SyncRunner + IptablesProxier, min sync "
          f"period 0 (sync period 1 h: no periodic full sync in between), iptables-{backend}; "
          f"{len(latencies)} changes, {args.spacing:g} s apart; kproxy's own part: parse, "
          f"track, runner wake-up, plan, render")
    row("p50", seconds_text(p50), f"<= {TARGETS['p50'] * 1000:.0f} ms",
        report.judge(f"change p50 ({backend})", p50 <= TARGETS["p50"]))
    row("p99", seconds_text(p99), f"<= {TARGETS['p99'] * 1000:.0f} ms",
        report.judge(f"change p99 ({backend})", p99 <= TARGETS["p99"]))
    row("  of which iptables-restore (median)", seconds_text(median(restores)))
    own_p50, own_p99 = percentile(own, 0.5), percentile(own, 0.99)
    row("  of which kproxy's own part: p50 / p99",
        f"{own_p50 * 1000:.1f} / {own_p99 * 1000:.1f} ms",
        f"<= {TARGETS['p50'] * 1000:.0f} / {TARGETS['p99'] * 1000:.0f}",
        "(within)" if own_p50 <= TARGETS["p50"] and own_p99 <= TARGETS["p99"] else "(over)")
    row("first sync of the same process (full, 1 run)", seconds_text(first["total"]))
    for label in ("read tables", "restore", "jumps"):
        row(f"  of which {label}", seconds_text(first.get(label, 0.0)))
    resync = result["resync"]
    row("full resync over the loaded tables (1 run)", seconds_text(resync["total"]))
    for label in ("read tables", "restore", "jumps"):
        row(f"  of which {label}", seconds_text(resync.get(label, 0.0)))
    row("  (checking the jumps one iptables -C each instead, same tables)",
        seconds_text(resync["one -C per jump"]))
    row("peak RSS of this long-running process", f"{result['rss_mb']:.0f} MB")


def part_connect(args: argparse.Namespace, report: Report) -> None:
    """One rule node per configuration, the same server pod behind all of them, and the
    clients' connections interleaved in rounds, so that drift affects every row alike."""
    from kproxy.devcluster.lab import Lab

    full_world = World(args.services, args.endpoints, node_name=NODE_NAME, node_ip=NODE_IP,
                       pod_cidr=POD_CIDR)
    by_address = sorted(full_world.indices, key=lambda index: socket.inet_aton(
        full_world.ips[index]))
    middle = len(by_address) // 2
    others = [index for position, index in enumerate(by_address)
              if position not in (0, middle, len(by_address) - 1)]
    probes = {
        "first": by_address[0],
        "middle": by_address[middle],
        "random": random.Random(3).choice(others),
        "last": by_address[-1],
    }
    small = list(dict.fromkeys([*probes.values(), *range(args.services)]))[:args.small_lab]
    configs: list[tuple[str, dict[str, Any]]] = [
        (f"{len(small)} services (trie)", {"indices": small, "leaf_size": 32}),
        (f"{args.services:,} services (trie)", {"leaf_size": 32}),
        (f"{args.services:,} services (flat list)", {"leaf_size": FLAT_LEAF_SIZE}),
    ]
    targets = [[full_world.ips[index], SERVICE_PORT] for index in probes.values()]
    per_round = max(1, -(-args.connections // (len(probes) * CONNECT_ROUNDS)))
    samples: list[dict[str, list[float]]] = [{} for _ in configs]
    root_rules: list[int] = []
    with Lab(nodes=len(configs) + 1, outside=False) as lab:
        server = lab.add_pod(lab.nodes[-1], "server")
        server.start_server(tcp=(TARGET_PORT,), udp=())
        real = {str(index): [server.ip] for index in probes.values()}
        base = {"services": args.services, "endpoints": args.endpoints, "backend": "legacy",
                "real_endpoints": real}
        clients = []
        for node, (_, extra) in zip(lab.nodes, configs, strict=False):
            where = {"name": node.name, "ip": node.ip, "pod_cidr": node.pod_cidr}
            programmed = run_inner(node.ns, "program", {**base, **extra, "node": where})
            root_rules.append(programmed["root_rules"])
            clients.append(lab.add_pod(node, f"client-{node.index}"))
        order = list(range(len(clients)))
        for _ in range(CONNECT_ROUNDS):
            for position in order:
                got = run_inner(clients[position].ns, "connect",
                                {"targets": targets, "count": per_round, "warmup": 5})
                for address, values in got["samples"].items():
                    samples[position].setdefault(address, []).extend(values)
            order.reverse()  # no row always right after another
    count = per_round * CONNECT_ROUNDS
    print(f"\nfirst TCP connect + first byte: client pod -> its node (the rules, "
          f"iptables-legacy) -> server pod on another node; one node per row, rows measured "
          f"in {CONNECT_ROUNDS} interleaved rounds; median µs over {count} new connections per "
          f"service, {count * len(probes)} per row; first/middle/last: place in a flat list "
          f"ordered by address. Nodes with the same rules differ by about 10%.")
    names = list(probes)
    print(f"  {'rules on the node':<30}{'root rules':>11}{'all':>8}"
          + "".join(f"{name:>8}" for name in names) + f"{'ratio':>8}  target")
    baseline = 0.0
    for position, (label, _) in enumerate(configs):
        every = [value for values in samples[position].values() for value in values]
        overall = median(every) * 1e6
        per = [median(samples[position][full_world.ips[probes[name]]]) * 1e6 for name in names]
        if position == 0:
            baseline = overall
        ratio = overall / baseline
        judged = ""
        if position == 1:
            word = report.judge("first connect ratio", ratio <= TARGETS["connect"])
            judged = f"<= {TARGETS['connect']}  {word}"
        elif position == 2:
            judged = "(what the trie buys)"
        print(f"  {label:<30}{root_rules[position]:>11,}{overall:>8.0f}"
              + "".join(f"{value:>8.0f}" for value in per) + f"{ratio:>8.2f}  {judged}")


BACKEND_LABELS = {
    "legacy": "iptables-legacy-restore",
    "libiptc": "libiptc (python-iptables)",
    "nft": "iptables-nft-restore",
}


def part_backends(args: argparse.Namespace, full: dict[str, Any] | None) -> None:
    print("\nbackends: time to apply kproxy's payloads (planned and rendered beforehand): a "
          "full sync into an empty namespace, and one-change syncs with every service present "
          "(backends sharing tables take turns); medians")
    print(f"  {'scale':<14}{'backend':<30}{'full sync':>12}{'runs':>6}"
          f"{'one change':>13}{'changes':>9}")

    def show(scale: int, kind: str, fulls: Sequence[float], changes: Sequence[float]) -> None:
        full_text = seconds_text(median(fulls)) if fulls else "-"
        change_text = seconds_text(median(changes)) if changes else "-"
        print(f"  {scale:>7,} x {args.endpoints:<3}{BACKEND_LABELS[kind]:<30}{full_text:>12}"
              f"{len(fulls):>6}{change_text:>13}{len(changes):>9}", flush=True)

    legacy_runs = 0 if full is not None else 1
    large_full = ["legacy"] * bool(legacy_runs) + ["libiptc"] * args.large_libiptc_full
    large = _backend_run(args.services, args, kinds=["legacy", "libiptc"],
                         full_kinds=large_full, changes=args.backend_changes)
    for kind in ("legacy", "libiptc"):
        fulls = full["restore_alone"] if full is not None and kind == "legacy" else \
            large["full"][kind]
        show(args.services, kind, fulls, large["changes"][kind])
    if not args.large_libiptc_full:
        print(f"  (libiptc's full sync at {args.services:,}: --large-libiptc-full; "
              f"about a minute at 10,000)")
    if args.small_services <= 0:
        return
    for kinds in (["legacy", "libiptc"], ["nft"]):
        small = _backend_run(args.small_services, args, kinds=kinds, full_kinds=kinds,
                             changes=args.backend_changes)
        for kind in kinds:
            show(args.small_services, kind, small["full"][kind], small["changes"][kind])


def _backend_run(services: int, args: argparse.Namespace, *, kinds: list[str],
                 full_kinds: list[str], changes: int) -> dict[str, Any]:
    spec = {"services": services, "endpoints": args.endpoints, "kinds": kinds,
            "full_kinds": full_kinds, "full_runs": 1, "changes": changes}
    role = "backend-" + "-".join(kinds)
    return in_fresh_namespace(role, "backend", spec,
                              NFT_TIMEOUT if "nft" in kinds else INNER_TIMEOUT)


PARTS = ("full", "nft-full", "change", "connect", "backends")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="runs of the full sync")
    parser.add_argument("--changes", type=int, default=30, help="endpoint changes timed")
    parser.add_argument("--spacing", type=float, default=0.1,
                        help="seconds between one change's sync and the next change")
    parser.add_argument("--connections", type=int, default=400,
                        help="new connections per lab configuration")
    parser.add_argument("--small-lab", type=int, default=100,
                        help="services in the lab's baseline configuration")
    parser.add_argument("--small-services", type=int, default=1000,
                        help="scale of the backend table's nft comparison")
    parser.add_argument("--backend-changes", type=int, default=5,
                        help="one-change syncs per backend in the backends table")
    parser.add_argument("--large-libiptc-full", action="store_true",
                        help="also time libiptc's full sync at --services (a minute at 10,000)")
    parser.add_argument("--nft-runs", type=int, default=5,
                        help="runs of the chunked full sync into iptables-nft")
    parser.add_argument("--change-backends", default="nft,legacy",
                        help="backends the one-change latency is measured on")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--inner", choices=sorted(INNER), help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(INNER[args.inner](json.loads(args.spec))))
        return
    if os.geteuid() != 0:
        print("bench_iptables: skipped (needs root for network namespaces)")
        return
    parts = [part for part in args.parts.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    import tempfile

    started = time.monotonic()
    report = Report()
    full = None
    print(f"iptables mode, {args.services:,} ClusterIP services x {args.endpoints} endpoints "
          f"(IPv4), measured in network namespaces", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-iptables-") as workdir:
        # A lock of our own: every namespace here is ours, and someone else may hold the
        # machine-wide lock for long while loading a big ruleset of their own.
        os.environ["XTABLES_LOCKFILE"] = str(Path(workdir) / "xtables.lock")
        if "full" in parts:
            full = part_full(args, report, Path(workdir))
        if "nft-full" in parts:
            part_nft_full(args)
        if "change" in parts:
            part_change(args, report)
        if "connect" in parts:
            part_connect(args, report)
        if "backends" in parts:
            part_backends(args, full)
    failed = [label for label, ok in report.verdicts if not ok]
    print(f"\ntargets: {len(report.verdicts) - len(failed)} of {len(report.verdicts)} met"
          + (f"; missed: {', '.join(failed)}" if failed else "")
          + f"  (bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
