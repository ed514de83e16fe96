"""Object files (``--from-file``) at 10,000 ClusterIP services x 10 endpoints, end to end.

Generates one ``v1`` ``List`` of the Services, their EndpointSlices and the Node, as JSON
(about 15 MB) and as YAML, then measures, each run in fresh processes:

* read + parse (kproxy.objectfile) beside the bare parser on the same bytes (``json.loads``,
  libyaml's ``CSafeLoader``), and the model (parse + validate into the state tracker);
* plan + render (a fresh planner's full plan, IPv4; the payload joined);
* ``kproxy rules --from-file`` end to end (a new process, output to /dev/null);
* as root: ``kproxy run --from-file --once --iptables-backend legacy`` end to end in a fresh
  network namespace, beside ``iptables-legacy-restore`` alone given the very payloads kproxy
  wrote (captured once, before the timed runs) in another fresh namespace. Both use an
  xtables lock file of this bench's own; the host's tables are never touched.

The two sides of every ratio are measured in the same run, interleaved. Prints ``uptime``
before and after: on a shared machine, compare the ratios.

Run: .venv/bin/python bench/bench_objectfile.py [--services N] [--endpoints E] [--runs R]
    [--parts read,plan,rules,once] [--formats json,yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iptables_world import World, service_object

THIS_FILE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(THIS_FILE))
NODE_NAME = "node1"
NODE_IP = "172.18.0.11"
POD_CIDR = "10.244.1.0/24"
RESTORE_TOOLS = ("iptables-legacy-restore", "ip6tables-legacy-restore")
COMMAND_TIMEOUT = 900.0
TARGETS = {"rules": 4.0, "once": 1.2}  # seconds; x restore alone


# --- the files --------------------------------------------------------------------------


def write_files(services: int, endpoints: int, workdir: Path,
                formats: Sequence[str]) -> dict[str, Path]:
    import yaml

    world = World(services, endpoints, node_name=NODE_NAME, node_ip=NODE_IP,
                  pod_cidr=POD_CIDR)
    items = [world.node]
    items += [service_object(index, world.ips[index]) for index in world.indices]
    items += [world.slice(index) for index in world.indices]
    document = {"apiVersion": "v1", "kind": "List", "items": items}
    paths: dict[str, Path] = {}
    if "json" in formats:
        paths["json"] = workdir / "objects.json"
        paths["json"].write_text(json.dumps(document))
    if "yaml" in formats:
        paths["yaml"] = workdir / "objects.yaml"
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        paths["yaml"].write_text(yaml.dump(document, Dumper=dumper, sort_keys=False))
    return paths


# --- measurements in a fresh process (--inner) ------------------------------------------


def inner_read(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The bare parser, then kproxy's read + parse, then the model, as `kproxy rules` runs
    them (the cyclic collector paused)."""
    from kproxy.filesource import feed_objects
    from kproxy.gctuning import one_shot_collector
    from kproxy.objectfile import load_object_file
    from kproxy.rejections import RejectionLog
    from kproxy.state import StateTracker

    path = spec["path"]
    with one_shot_collector():
        started = time.perf_counter()
        data = Path(path).read_bytes()
        if spec["format"] == "json":
            bare: Any = json.loads(data)
        else:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            bare = list(yaml.load_all(data, Loader=loader))
        parser_alone = time.perf_counter() - started
        del bare, data
        started = time.perf_counter()
        objects = load_object_file(path)
        read = time.perf_counter() - started
        tracker = StateTracker()
        started = time.perf_counter()
        feed_objects(objects, tracker, RejectionLog(), node_name=NODE_NAME, proxy_name="")
        snapshot = tracker.snapshot()
        model = time.perf_counter() - started
    return {"parser": parser_alone, "read": read, "model": model,
            "service_ports": len(snapshot.services),
            "endpoints": sum(len(e) for e in snapshot.endpoints.values())}


def inner_plan(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh planner's full plan of the file's state (IPv4) and the joined payload."""
    from kproxy.config.record import ProxyConfig
    from kproxy.filesource import feed_objects
    from kproxy.gctuning import one_shot_collector
    from kproxy.iptables.context import plan_context
    from kproxy.iptables.planner import IncrementalPlanner
    from kproxy.iptables.restore import join_payloads, render_full
    from kproxy.model.types import IPFamily
    from kproxy.objectfile import load_object_file
    from kproxy.rejections import RejectionLog
    from kproxy.state import StateTracker

    with one_shot_collector():
        tracker = StateTracker()
        feed_objects(load_object_file(spec["path"]), tracker, RejectionLog(),
                     node_name=NODE_NAME, proxy_name="")
        snapshot = tracker.snapshot()
        started = time.perf_counter()
        planner = IncrementalPlanner(plan_context(ProxyConfig(hostname=NODE_NAME),
                                                  snapshot.node, IPFamily.IPV4))
        ruleset = planner.full(snapshot)
        planned = time.perf_counter()
        text = join_payloads(render_full(ruleset))
        rendered = time.perf_counter()
    return {"plan": planned - started, "render": rendered - planned,
            "rules": ruleset.rule_count, "payload_mb": len(text) / 1e6}


INNER: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "read": inner_read,
    "plan": inner_plan,
}


def run_inner(measurement: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, THIS_FILE, "--inner", measurement,
                           "--spec", json.dumps(spec)], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, check=False, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"{measurement} failed:\n{done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child_env(extra_path: str | None = None) -> dict[str, str]:
    """This checkout's kproxy first on the path (a worktree shadows an installed one)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    if extra_path:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def timed(argv: Sequence[str], env: Mapping[str, str] | None = None,
          stdin: Any = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(list(argv), stdin=stdin, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=COMMAND_TIMEOUT,
                          check=False, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-1500:]}")
    return elapsed


# --- --once beside the restore alone ----------------------------------------------------


def kproxy_argv(command: str, path: Path) -> list[str]:
    argv = [sys.executable, "-m", "kproxy.cli", command, "--from-file", str(path),
            "--hostname-override", NODE_NAME]
    if command == "run":
        argv += ["--once", "--iptables-backend", "legacy"]
    return argv


def capture_wrappers(workdir: Path) -> tuple[Path, Path]:
    """A directory of ``*-legacy-restore`` stand-ins that keep a copy of their input (in
    order) and run the real tool; and the directory the copies go to."""
    wrappers, captured = workdir / "wrappers", workdir / "captured"
    wrappers.mkdir()
    captured.mkdir()
    for tool in RESTORE_TOOLS:
        real = shutil.which(tool)
        if real is None:
            raise RuntimeError(f"{tool} is not installed")
        script = wrappers / tool
        script.write_text(
            "#!/bin/sh\n"
            f'copy="{captured}/$(date +%s%N).{tool}"\n'
            f'tee "$copy" | exec {real} "$@"\n')
        script.chmod(0o755)
    return wrappers, captured


def once_and_restores(path: Path, workdir: Path, runs: int) -> dict[str, Any]:
    """--once's payloads captured first (untimed), then timed runs: --once in a fresh
    namespace, then each captured payload restored in order into another fresh one."""
    from kproxy.devcluster.netns import NetNamespace
    from kproxy.iptables.backend import RESTORE_ARGS, WAIT_ARGS

    wrappers, captured = capture_wrappers(workdir)
    with NetNamespace("objfile-capture") as namespace:
        timed(namespace.exec_argv(kproxy_argv("run", path)), child_env(str(wrappers)))
    payloads = sorted(captured.iterdir())
    if not payloads:
        raise RuntimeError("kproxy run --once wrote no payload")
    once: list[float] = []
    alone: list[float] = []
    for run in range(runs):
        with NetNamespace("objfile-once") as namespace:
            once.append(timed(namespace.exec_argv(kproxy_argv("run", path)), child_env()))
        with NetNamespace("objfile-restore") as namespace:
            total = 0.0
            for payload in payloads:
                tool = payload.suffix.lstrip(".")
                with payload.open("rb") as stream:
                    total += timed(namespace.exec_argv([tool, *WAIT_ARGS, *RESTORE_ARGS]),
                                   stdin=stream)
            alone.append(total)
        print(f"    run {run + 1}: --once {once[-1]:.2f} s, restore alone {alone[-1]:.2f} s",
              flush=True)
    return {"once": once, "alone": alone,
            "payload_mb": sum(p.stat().st_size for p in payloads) / 1e6,
            "payloads": len(payloads)}


# --- the table --------------------------------------------------------------------------


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def seconds(values: Sequence[float]) -> str:
    value = statistics.median(values)
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def row(label: str, measured: str, ratio: str = "", target: str = "") -> None:
    print(f"  {label:<68} {measured:>9} {ratio:>8}   {target}")


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


PARTS = ("read", "plan", "rules", "once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="runs of every measurement")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--formats", default="json,yaml",
                        help="files read (plan, rules and once use the first)")
    parser.add_argument("--inner", choices=sorted(INNER), help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(INNER[args.inner](json.loads(args.spec))))
        return
    parts = [part for part in args.parts.split(",") if part]
    formats = [name for name in args.formats.split(",") if name]
    unknown = set(parts) - set(PARTS)
    if unknown or not formats or set(formats) - {"json", "yaml"}:
        parser.error(f"parts from {', '.join(PARTS)}; formats from json, yaml")
    started = time.monotonic()
    print(f"object files, {args.services:,} ClusterIP services x {args.endpoints} endpoints "
          f"(one v1 List); medians of {args.runs} runs, fresh processes")
    print(f"  before: {uptime()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-objectfile-") as directory:
        workdir = Path(directory)
        # A lock of our own: our namespaces only, and another job may hold the host's.
        os.environ["XTABLES_LOCKFILE"] = str(workdir / "xtables.lock")
        paths = write_files(args.services, args.endpoints, workdir, formats)
        main_path = paths[formats[0]]
        sizes = ", ".join(f"{name} {path.stat().st_size / 1e6:.1f} MB"
                          for name, path in paths.items())
        print(f"  files: {sizes}\n")
        print(f"  {'':<68} {'median':>9} {'ratio':>8}   target")
        if "read" in parts:
            for name, path in paths.items():
                reads = [run_inner("read", {"path": str(path), "format": name})
                         for _ in range(args.runs)]
                bare = [r["parser"] for r in reads]
                read = [r["read"] for r in reads]
                bare_name = "json.loads" if name == "json" else "yaml CSafeLoader"
                row(f"{name}: bare parser ({bare_name}) on the bytes (baseline)", seconds(bare),
                    "1.00")
                row(f"{name}: kproxy read + parse (objectfile)", seconds(read),
                    f"{statistics.median(read) / statistics.median(bare):.2f}")
                row(f"{name}: model: parse + validate into the tracker, "
                    f"{reads[0]['endpoints']:,} endpoints",
                    seconds([r["model"] for r in reads]))
                row(f"{name}: read + parse + model",
                    seconds([r["read"] + r["model"] for r in reads]))
        if "plan" in parts:
            plans = [run_inner("plan", {"path": str(main_path)}) for _ in range(args.runs)]
            row(f"plan (fresh planner, IPv4, {plans[0]['rules']:,} rules)",
                seconds([p["plan"] for p in plans]))
            row(f"render ({plans[0]['payload_mb']:.0f} MB joined)",
                seconds([p["render"] for p in plans]))
            row("plan + render", seconds([p["plan"] + p["render"] for p in plans]))
        if "rules" in parts:
            for name, path in paths.items():
                rules = [timed(kproxy_argv("rules", path), child_env())
                         for _ in range(args.runs)]
                ok = statistics.median(rules) <= TARGETS["rules"]
                target = f"<= {TARGETS['rules']:.0f} s {verdict(ok)}" if name == "json" else ""
                row(f"kproxy rules --from-file {name}, end to end", seconds(rules), "", target)
        if "once" in parts:
            if os.geteuid() != 0:
                print("  --once: skipped (needs root for network namespaces)")
            else:
                result = once_and_restores(main_path, workdir, args.runs)
                ratio = statistics.median(result["once"]) / statistics.median(result["alone"])
                row(f"*-legacy-restore alone, kproxy's {result['payloads']} payloads, "
                    f"{result['payload_mb']:.0f} MB (baseline)", seconds(result["alone"]),
                    "1.00")
                row(f"kproxy run --from-file {formats[0]} --once, legacy, end to end",
                    seconds(result["once"]), f"{ratio:.2f}",
                    f"<= {TARGETS['once']} x {verdict(ratio <= TARGETS['once'])}")
    print(f"\n  after: {uptime()}  (bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
