"""userspace mode relay against a direct connection and against HAProxy, in one run.

Everything runs on 127.0.0.1 inside a network namespace of its own (created and deleted
here: the script re-runs itself inside it), so the host's network is never touched and the
namespace's sysctls (port range, TIME_WAIT reuse) can be set for the connection-rate test.

Paths compared, each to the same C server:
* direct: client -> server
* kproxy: client -> kproxy's TCP listener (one target, uvloop when installed; splice) -> server
* haproxy: client -> HAProxy (``mode tcp``, ``option splice-auto``, ``nbthread 1``) -> server

Figures (median of ``--runs`` runs, the three paths interleaved in every run):
* bulk throughput, one TCP stream: iperf3 against ``iperf3 -s``
* 1 KiB request/response on 50 keepalive connections: wrk (1 KiB request header, 1 KiB
  response) against HAProxy serving a static response; requests/s and p99 latency
* new connections per second (connect, 1 KiB exchange, close): wrk with ``Connection: close``
* memory per open connection: kproxy's RSS growth over N idle relayed connections
  (N = 10,000, or fewer where RLIMIT_NOFILE's hard limit cannot hold 2 N sockets)

Targets are printed with pass/FAIL words; nothing asserts. The machine may be shared: the
table says so when the runs of one figure spread widely.

Run (as root): .venv/bin/python bench/bench_userspace.py [--runs 5] [--seconds 3]
    [--connections 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

THIS_FILE = os.path.abspath(__file__)
LOCALHOST = "127.0.0.1"
PATHS = ("direct", "kproxy", "haproxy")
BODY_BYTES = 1024
# Latency is measured with each of the 50 connections pausing this long between requests
# (~2,500 requests/s in all): what a relay adds, not how long a saturated CPU queues.
PACE_MS = 20
RELAY_PIPE_SIZE = 262144
TARGETS = {
    "bulk_vs_haproxy": 1.0,
    "bulk_vs_direct": 0.5,
    "rr_vs_haproxy": 0.6,
    "added_p99_ms": 2.0,
    "cps_vs_haproxy": 0.4,
    "kib_per_connection": 64.0,
}


# --- processes inside the namespace ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((LOCALHOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Processes:
    """Background processes of one run, stopped (and waited for) in reverse order."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()


def haproxy_config(workdir: Path, tcp_routes: dict[int, int], http_port: int | None) -> Path:
    lines = [
        "global",
        "  nbthread 1",
        "  maxconn 4096",
        "defaults",
        "  timeout connect 5s",
        "  timeout client 1h",
        "  timeout server 1h",
    ]
    for listen_port, server_port in tcp_routes.items():
        lines += [
            f"listen relay{listen_port}",
            "  mode tcp",
            "  option splice-auto",
            f"  bind {LOCALHOST}:{listen_port}",
            f"  server s {LOCALHOST}:{server_port}",
        ]
    if http_port is not None:
        body = workdir / "body.txt"
        body.write_bytes(b"x" * BODY_BYTES)
        lines += [
            "frontend web",
            "  mode http",
            f"  bind {LOCALHOST}:{http_port}",
            f"  http-request return status 200 content-type text/plain file {body}",
        ]
    path = workdir / f"haproxy-{len(tcp_routes)}-{http_port}.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the kproxy relay process ---------------------------------------------------------------


def relay_main(target_ports: list[int], use_splice: bool, pipe_size: int) -> None:
    """Listeners with one 127.0.0.1 target each; prints their ports, runs until SIGTERM."""
    from kproxy.userspace.eventloop import use_fast_event_loop
    from kproxy.userspace.limits import raise_nofile_limit

    raise_nofile_limit()
    fast = use_fast_event_loop()
    profile = os.environ.get("KPROXY_BENCH_PROFILE")
    if not profile:
        asyncio.run(_relay(target_ports, use_splice, pipe_size, fast))
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(asyncio.run, _relay(target_ports, use_splice, pipe_size, fast))
    profiler.dump_stats(f"{profile}.{os.getpid()}")


async def _relay(target_ports: list[int], use_splice: bool, pipe_size: int, fast: bool) -> None:
    from kproxy.clock import SystemClock
    from kproxy.model.types import IPFamily
    from kproxy.userspace.balancer import Balancer
    from kproxy.userspace.limits import ConnectionBudget, RelayLimits
    from kproxy.userspace.listener import open_tcp_listener
    from kproxy.userspace.stats import UserspaceStats
    from kproxy.userspace.targets import Target, refusal_reason
    from kproxy.userspace.tcp_relay import Carriers

    clock = SystemClock()
    limits = RelayLimits(pipe_size=pipe_size)
    budget = ConnectionBudget.for_limits(limits)
    stats = UserspaceStats()
    ports = []
    for target_port in target_ports:
        listener = await open_tcp_listener(
            f"bench:{target_port}",
            balancer=Balancer(clock),
            limits=limits,
            budget=budget,
            stats=stats,
            clock=clock,
            family=IPFamily.IPV4,
            bind_host=LOCALHOST,
            carriers=Carriers(limits.pipe_size, use_splice=use_splice),
            # The bench relays on 127.0.0.1, which a node's relay never dials.
            refusal=lambda ip: None if ip == LOCALHOST else refusal_reason(ip),
        )
        listener.update([Target(LOCALHOST, target_port)], None)
        ports.append(listener.port)
    print("PORTS " + " ".join(map(str, ports)) + f" uvloop={fast}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def start_relay(
    procs: Processes, target_ports: list[int], pipe_size: int, use_splice: bool = True
) -> tuple[subprocess.Popen[bytes], list[int]]:
    argv = [sys.executable, THIS_FILE, "--relay", ",".join(map(str, target_ports)),
            "--pipe-size", str(pipe_size)]
    if not use_splice:
        argv.append("--copy")
    proc = procs.start(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("PORTS "):
        raise RuntimeError(f"relay did not start: {line!r}")
    words = line.split()
    if "uvloop=True" not in words:
        print("note: uvloop is not installed; kproxy relays on asyncio's own loop")
    return proc, [int(word) for word in words[1:] if word.isdigit()]


# --- the measurements -----------------------------------------------------------------------


def iperf3(port: int, seconds: int) -> float:
    """Bits per second received through ``port`` by one TCP stream."""
    for _ in range(3):
        done = subprocess.run(
            ["iperf3", "-c", LOCALHOST, "-p", str(port), "-t", str(seconds), "-J"],
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        )
        result = json.loads(done.stdout or "{}")
        received = result.get("end", {}).get("sum_received")
        if received is not None:
            return float(received["bits_per_second"])
        # The server can still be finishing the previous test ("the server is busy").
        print(f"note: iperf3 through port {port} failed ({result.get('error')}), retrying",
              file=sys.stderr)
        time.sleep(1.0)
    raise RuntimeError(f"iperf3 through port {port} failed three times")


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(port: int, seconds: int, *, close: bool, pace_ms: int = 0) -> tuple[float, float]:
    """(requests/s, p99 latency in seconds) of 50 connections, 1 KiB request and response.

    With ``pace_ms`` each connection waits that long between its requests: latency at a
    load the machine keeps up with, instead of the queueing of a saturated one."""
    headers = ["-H", "X-Pad: " + "p" * (BODY_BYTES - 60)]
    if close:
        headers += ["-H", "Connection: close"]
    script: list[str] = []
    if pace_ms:
        pace = Path(tempfile.gettempdir(), f"kproxy-bench-pace-{os.getpid()}.lua")
        pace.write_text(f"function delay()\n  return {pace_ms}\nend\n")
        script = ["-s", str(pace)]
    done = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", *script, *headers,
         f"http://{LOCALHOST}:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", done.stdout, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", done.stdout)
    if rate is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{done.stdout}")
    if errors is not None and close is False:
        print(f"note: wrk reported errors on port {port}: {errors.group(0)}")
    return float(rate.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (0 for the direct path: no relay)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def hold_server_main() -> None:
    """Accepts connections and echoes one byte on each, keeping them open until SIGTERM."""
    from kproxy.userspace.limits import raise_nofile_limit

    raise_nofile_limit()

    async def serve() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(1))
            await reader.read()  # until the client closes
            writer.close()

        server = await asyncio.start_server(echo, LOCALHOST, 0, backlog=4096)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    asyncio.run(serve())


async def open_idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections through the relay, each proven end to end by a 1-byte echo."""
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    gate = asyncio.Semaphore(200)

    async def one() -> None:
        async with gate:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, (LOCALHOST, port))
            await loop.sock_sendall(sock, b"x")
            if await loop.sock_recv(sock, 1) != b"x":
                raise RuntimeError("no echo through the relay")
            sockets.append(sock)

    await asyncio.gather(*(one() for _ in range(count)))
    return sockets


def memory_per_connection(procs: Processes, count: int, pipe_size: int) -> float:
    """KiB of kproxy RSS per idle relayed connection (kernel socket buffers not included)."""
    holder = procs.start([sys.executable, THIS_FILE, "--hold-server"], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    hold_port = int(holder.stdout.readline().split()[1])
    relay, (relay_port,) = start_relay(procs, [hold_port], pipe_size)
    # Warm up: the first connections allocate the event loop's and the pools' structures.
    warm = asyncio.run(open_idle_connections(relay_port, 100))
    for sock in warm:
        sock.close()
    time.sleep(0.5)
    before = rss_kib(relay.pid)
    held = asyncio.run(open_idle_connections(relay_port, count))
    time.sleep(0.5)
    after = rss_kib(relay.pid)
    for sock in held:
        sock.close()
    relay.send_signal(signal.SIGTERM)
    relay.wait(10)
    holder.send_signal(signal.SIGTERM)
    holder.wait(10)
    return (after - before) / count


# --- the run --------------------------------------------------------------------------------


def tune_namespace() -> None:
    """Sysctls of this (private) namespace: enough ports and backlog for the connection-rate
    test, whose TIME_WAIT sockets would otherwise exhaust the ephemeral range."""
    for key, value in {
        "net/ipv4/ip_local_port_range": "10000 65000",
        "net/ipv4/tcp_tw_reuse": "1",
        "net/core/somaxconn": "8192",
    }.items():
        Path("/proc/sys", key).write_text(value)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much the runs of one figure disagree."""
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


def inner(args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    tune_namespace()
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="kproxy-bench-"))
    results: dict[str, dict[str, list[float]]] = {
        name: {path: [] for path in (*PATHS, "kproxy-copy")}
        for name in ("bulk", "rr", "p99", "cps", "cpu_bulk", "cpu_rr", "cpu_cps")
    }
    try:
        iperf_port, http_port = free_port(), free_port()
        procs.start(["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
        procs.start(["haproxy", "-q", "-db", "-f", str(haproxy_config(workdir, {}, http_port))])
        wait_listening(iperf_port)
        wait_listening(http_port)
        k_relay, (k_iperf, k_http) = start_relay(procs, [iperf_port, http_port], args.pipe_size)
        c_relay, (c_iperf,) = start_relay(procs, [iperf_port], args.pipe_size, use_splice=False)
        h_iperf, h_http = free_port(), free_port()
        config = haproxy_config(workdir, {h_iperf: iperf_port, h_http: http_port}, None)
        h_relay = procs.start(["haproxy", "-q", "-db", "-f", str(config)])
        # The relaying process of each path, whose CPU time per unit of work is measured:
        # a figure that the machine's other load disturbs far less than rates do.
        relay_pid: dict[str, int | None] = {"direct": None, "kproxy": k_relay.pid,
                                            "haproxy": h_relay.pid, "kproxy-copy": c_relay.pid}
        wait_listening(h_iperf)
        bulk_ports = {"direct": iperf_port, "kproxy": k_iperf, "haproxy": h_iperf,
                      "kproxy-copy": c_iperf}
        http_ports = {"direct": http_port, "kproxy": k_http, "haproxy": h_http}
        for run in range(args.runs):
            # Rotate the order so that no path always runs first (or last) in a run.
            order = list(PATHS[run % 3:] + PATHS[: run % 3])
            for path in [*order, "kproxy-copy"] if "bulk" in parts else []:
                before = cpu_seconds(relay_pid[path])
                rate = iperf3(bulk_ports[path], args.seconds)
                results["bulk"][path].append(rate)
                # CPU seconds per GB relayed.
                spent = cpu_seconds(relay_pid[path]) - before
                results["cpu_bulk"][path].append(spent / (rate * args.seconds / 8 / 1e9))
            for path in order if "rr" in parts else []:
                before = cpu_seconds(relay_pid[path])
                rate, _ = wrk(http_ports[path], args.seconds, close=False)
                results["rr"][path].append(rate)
                spent = cpu_seconds(relay_pid[path]) - before
                results["cpu_rr"][path].append(spent / (rate * args.seconds) * 1e6)
                _, p99 = wrk(http_ports[path], args.seconds, close=False, pace_ms=PACE_MS)
                results["p99"][path].append(p99)
            for path in order if "cps" in parts else []:
                before = cpu_seconds(relay_pid[path])
                rate, _ = wrk(http_ports[path], args.seconds, close=True)
                results["cps"][path].append(rate)
                spent = cpu_seconds(relay_pid[path]) - before
                results["cpu_cps"][path].append(spent / (rate * args.seconds) * 1e6)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
        procs.stop_all()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        count = min(args.connections, (hard - 1000) // 2)
        memory = [memory_per_connection(procs, count, args.pipe_size)
                  for _ in range(args.memory_runs if "memory" in parts else 0)]
    finally:
        procs.stop_all()
    report(results, memory, count, args)


def report(
    results: dict[str, dict[str, list[float]]],
    memory: list[float],
    count: int,
    args: argparse.Namespace,
) -> None:
    med = {name: {path: median(v) for path, v in paths.items() if v}
           for name, paths in results.items()}

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    bulk, rr, p99, cps = med["bulk"], med["rr"], med["p99"], med["cps"]
    rows: list[tuple[str, str, str, str, str, str]] = []
    if "kproxy" in bulk:
        rows.append((
            "bulk throughput, one TCP stream (Gbit/s)",
            f"{bulk['direct'] / 1e9:.2f}", f"{bulk['kproxy'] / 1e9:.2f}",
            f"{bulk['haproxy'] / 1e9:.2f}",
            f"{bulk['kproxy'] / bulk['haproxy']:.2f} x HAProxy, "
            f"{bulk['kproxy'] / bulk['direct']:.0%} of direct",
            ">= 1.0 x HAProxy "
            f"{verdict(bulk['kproxy'] / bulk['haproxy'] >= TARGETS['bulk_vs_haproxy'])}, "
            f">= 50% of direct {verdict(bulk['kproxy'] / bulk['direct'] >= 0.5)}"))
    if "kproxy" in rr:
        added_p99 = (p99["kproxy"] - p99["direct"]) * 1e3
        rows.append((
            "1 KiB request/response, 50 keepalive conns (req/s)",
            f"{rr['direct']:,.0f}", f"{rr['kproxy']:,.0f}", f"{rr['haproxy']:,.0f}",
            f"{rr['kproxy'] / rr['haproxy']:.2f} x HAProxy",
            f">= 0.6 x HAProxy "
            f"{verdict(rr['kproxy'] / rr['haproxy'] >= TARGETS['rr_vs_haproxy'])}"))
        rows.append((
            f"  p99 latency at ~{50 * 1000 // PACE_MS:,} req/s (ms)",
            f"{p99['direct'] * 1e3:.2f}", f"{p99['kproxy'] * 1e3:.2f}",
            f"{p99['haproxy'] * 1e3:.2f}", f"+{added_p99:.2f} ms over direct",
            f"added <= 2 ms {verdict(added_p99 <= TARGETS['added_p99_ms'])}"))
    if "kproxy" in cps:
        rows.append((
            "new connections/s (connect, 1 KiB exchange, close)",
            f"{cps['direct']:,.0f}", f"{cps['kproxy']:,.0f}", f"{cps['haproxy']:,.0f}",
            f"{cps['kproxy'] / cps['haproxy']:.2f} x HAProxy",
            f">= 0.4 x HAProxy "
            f"{verdict(cps['kproxy'] / cps['haproxy'] >= TARGETS['cps_vs_haproxy'])}"))
    if memory:
        rows.append((
            f"memory per open connection ({count:,} idle, KiB)", "-",
            f"{median(memory):.1f}", "-", "kproxy RSS growth / connections",
            f"<= 64 KiB {verdict(median(memory) <= TARGETS['kib_per_connection'])}"))
    print(f"userspace relay, median of {args.runs} runs of {args.seconds} s "
          f"(memory: {args.memory_runs} runs), all on 127.0.0.1 in a private namespace")
    header = ("figure", "direct", "kproxy", "HAProxy", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(6)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    cpu = {name: med[f"cpu_{name}"] for name in ("bulk", "rr", "cps")}
    cpu_rows = [(label, unit, cpu[name]) for name, label, unit in (
        ("bulk", "bulk", "CPU s per GB"), ("rr", "request/response", "CPU µs per request"),
        ("cps", "new connections", "CPU µs per connection")) if "kproxy" in cpu[name]]
    if cpu_rows:
        print("CPU time of the relaying process per unit of work (less disturbed by the "
              "machine's other load than the rates):")
        for label, unit, values in cpu_rows:
            extra = (f", recv/send fallback {values['kproxy-copy']:.3f}"
                     if "kproxy-copy" in values else "")
            print(f"  {label}: kproxy {values['kproxy']:.3f}, HAProxy {values['haproxy']:.3f} "
                  f"{unit} ({values['haproxy'] / values['kproxy']:.2f} x less for kproxy){extra}")
    if "kproxy-copy" in bulk:
        print(f"kproxy with the recv/send fallback instead of splice: "
              f"{bulk['kproxy-copy'] / 1e9:.2f} Gbit/s bulk")
    noisy = [f"{name}/{path} {spread(v):.0%}" for name, paths in results.items()
             for path, v in paths.items() if v and spread(v) > 0.25]
    if noisy:
        print("noisy machine: runs of these figures spread by more than 25% (max-min)/median: "
              + ", ".join(noisy))
    print("raw runs: " + json.dumps({"results": results, "memory_kib": memory}))


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench_userspace needs root (a private network namespace)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "wrk", "haproxy", "ip"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench_userspace needs {tool} (make bench installs it)", file=sys.stderr)
            return 1
    from kproxy.devcluster.netns import NetNamespace

    argv = [sys.executable, THIS_FILE, "--inner", "--runs", str(args.runs),
            "--seconds", str(args.seconds), "--connections", str(args.connections),
            "--memory-runs", str(args.memory_runs), "--pipe-size", str(args.pipe_size),
            "--parts", args.parts]
    with NetNamespace("bench") as namespace:
        done = subprocess.run(namespace.exec_argv(argv), check=False)
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--memory-runs", type=int, default=5)
    parser.add_argument("--pipe-size", type=int, default=RELAY_PIPE_SIZE,
                        help="bytes per splice pipe of kproxy's relay")
    parser.add_argument("--parts", default="bulk,rr,cps,memory")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--copy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relay:
        relay_main([int(port) for port in args.relay.split(",")], not args.copy, args.pipe_size)
        return 0
    if args.hold_server:
        hold_server_main()
        return 0
    if args.inner:
        inner(args)
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
