"""First-packet cost and sync cost of service dispatch: one flat chain vs a dispatch tree.

For N services (cluster IPs drawn at random from 10.96.0.0/12, one port each, every fourth
with a second port; every third service with node ports), it prints:

* the rules a new connection evaluates before reaching its service's rule, for the median
  and the worst service port: kube-proxy's flat ``KUBE-SERVICES`` (position in the chain)
  against the dispatch tree (bucket jumps included), for cluster IPs and node ports;
* the chains of the tree, the time to build it from scratch (parse included) and the time of
  one-entry updates (add, remove, replace the rule), with the chains each one writes.

Timings are medians of 5 runs, with the garbage collector tuned as kproxy configures it; the
build also reports CPU time, which a busy shared machine inflates less than wall-clock time.
Run: .venv/bin/python bench/bench_dispatch.py [--leaf-size N]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import time
from collections.abc import Callable, Hashable
from functools import partial

from kproxy.gctuning import configure_gc
from kproxy.iptables.dispatch import DispatchBy, DispatchEntry, DispatchTree
from kproxy.model.types import IPFamily, Protocol

SIZES = (100, 1_000, 10_000, 30_000)
RUNS = 5
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")


def cluster_ip_entries(services: int, rng: random.Random) -> list[DispatchEntry]:
    base = int(SERVICE_CIDR.network_address)
    numbers = rng.sample(range(base + 1, base + SERVICE_CIDR.num_addresses - 1), services)
    entries = []
    for index, number in enumerate(numbers):
        address = str(ipaddress.IPv4Address(number))
        for port in (80, 443) if index % 4 == 0 else (80,):
            entries.append(
                DispatchEntry(
                    (index, port),
                    address,
                    Protocol.TCP,
                    port,
                    f'-d {address}/32 -p tcp -m comment --comment "ns/svc-{index}:{port} '
                    f'cluster IP" -m tcp --dport {port} -j KPROXY-SVC-{index:016X}',
                )
            )
    return entries


def node_port_entries(services: int, rng: random.Random) -> list[DispatchEntry]:
    count = min(services // 3, 2768)  # the default node port range holds 2768 ports
    ports = rng.sample(range(30000, 32768), count)
    return [
        DispatchEntry(
            ("np", index),
            None,
            Protocol.TCP,
            port,
            f'-p tcp -m comment --comment "ns/svc-{index}" -m tcp --dport {port} '
            f"-j KPROXY-EXT-{index:016X}",
        )
        for index, port in enumerate(ports)
    ]


def build(entries: list[DispatchEntry], by: DispatchBy, leaf_size: int) -> DispatchTree:
    root = "KPROXY-SERVICES" if by == "destination" else "KPROXY-NODEPORTS"
    tree = DispatchTree(root, IPFamily.IPV4, by=by, leaf_size=leaf_size)
    tree.update([], entries)
    return tree


def median_ms(work: Callable[[], object]) -> tuple[float, float]:
    """Median wall-clock and CPU milliseconds (CPU: what a busy shared machine cannot inflate)."""
    wall, cpu = [], []
    for _ in range(RUNS):
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def traversal(tree: DispatchTree, entries: list[DispatchEntry]) -> tuple[int, int, int, int]:
    """(flat median, flat worst, tree median, tree worst) rules evaluated to reach a service."""
    flat = sorted(range(1, len(entries) + 1))
    walked = sorted(tree.path(e.destination, e.protocol, e.port).rules for e in entries)
    return flat[len(flat) // 2], flat[-1], walked[len(walked) // 2], walked[-1]


def one_change_ms(
    entries: list[DispatchEntry], by: DispatchBy, leaf_size: int
) -> dict[str, tuple[float, int]]:
    """Median ms and chains touched (written + deleted) for one-entry updates."""
    tree = build(entries, by, leaf_size)
    rng = random.Random(7)
    results: dict[str, list[tuple[float, int]]] = {"add": [], "remove": [], "replace": []}

    def timed(label: str, remove: list[Hashable], add: list[DispatchEntry]) -> None:
        start = time.perf_counter()
        changes = tree.update(remove, add)
        elapsed = (time.perf_counter() - start) * 1000
        results[label].append((elapsed, len(changes.written) + len(changes.deleted)))

    for run in range(RUNS):
        victim = entries[rng.randrange(len(entries))]
        destination = None if by == "port" else f"10.111.{run}.{rng.randrange(1, 255)}"
        port = 32000 + run if by == "port" else 53
        match = "" if destination is None else f"-d {destination}/32 "
        extra = DispatchEntry(
            ("bench", run),
            destination,
            Protocol.UDP,
            port,
            f"{match}-p udp -m udp --dport {port} -j KPROXY-SVC-BENCH{run:08d}",
        )
        # A new target chain, as when a service port's chain name changes.
        replaced = DispatchEntry(
            victim.key,
            victim.destination,
            victim.protocol,
            victim.port,
            victim.rule.replace("-j KPROXY-", f"-j KPROXY-R{run}"),
        )
        timed("add", [], [extra])
        timed("remove", [extra.key], [])
        timed("replace", [], [replaced])
    return {
        label: (
            statistics.median(ms for ms, _ in samples),
            max(touched for _, touched in samples),
        )
        for label, samples in results.items()
    }


def report(
    label: str,
    entries_for: Callable[[int, random.Random], list[DispatchEntry]],
    by: DispatchBy,
    leaf_size: int,
) -> None:
    print(f"\n{label} (leaf_size {leaf_size})")
    print(
        f"{'services':>8} {'entries':>8} | {'flat med':>8} {'flat max':>8} | {'tree med':>8} "
        f"{'tree max':>8} {'chains':>7} | {'build ms':>8} {'cpu ms':>7} | "
        f"{'add ms':>7} {'del ms':>7} {'repl ms':>7} {'touched':>7}"
    )
    for services in SIZES:
        entries = entries_for(services, random.Random(services))
        if not entries:
            continue
        tree = build(entries, by, leaf_size)
        flat_median, flat_worst, tree_median, tree_worst = traversal(tree, entries)
        build_ms, build_cpu_ms = median_ms(partial(build, entries, by, leaf_size))
        changes = one_change_ms(entries, by, leaf_size)
        touched = max(count for _, count in changes.values())
        print(
            f"{services:>8} {len(entries):>8} | {flat_median:>8} {flat_worst:>8} | "
            f"{tree_median:>8} {tree_worst:>8} {len(tree.chains()):>7} | "
            f"{build_ms:>8.1f} {build_cpu_ms:>7.1f} | "
            f"{changes['add'][0]:>7.3f} {changes['remove'][0]:>7.3f} "
            f"{changes['replace'][0]:>7.3f} {touched:>7}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaf-size", type=int, default=32)
    args = parser.parse_args()
    configure_gc()
    report(
        "cluster IPs: KPROXY-SERVICES by destination",
        cluster_ip_entries,
        "destination",
        args.leaf_size,
    )
    report("node ports: KPROXY-NODEPORTS by port", node_port_entries, "port", args.leaf_size)
    print(
        "\nflat: position in one chain (kube-proxy); tree: rules evaluated, bucket jumps "
        "included; touched: most chains written + deleted by one update"
    )


if __name__ == "__main__":
    main()
