"""A load generator for the lab: HTTP requests at a fixed rate, each on a new connection,
counting failures and answers per version and per pod.

``python -m kproxy.devcluster.loadgen HOST PORT --rate 100 --duration 20`` runs inside a
namespace; it prints ``STARTED`` once the first request went out and, at the end, one JSON
line: the :class:`LoadReport`. SIGINT or SIGTERM ends it early (the requests under way
finish and are counted). Requests are started on a fixed schedule (not one after the
other), so a slow or hanging request never lowers the offered rate; every request has its own
timeout. A request fails when it is refused, reset, times out or gets no pod server answer.

:class:`LoadGenerator` is the host-side API: it runs this module in a lab host's namespace in
the background while the caller changes the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kproxy.devcluster.netns import Popen, wait_for_line

if TYPE_CHECKING:
    from kproxy.devcluster.lab import LabHost

LOADGEN_MODULE = "kproxy.devcluster.loadgen"
REQUEST_TIMEOUT = 2.0
START_LIMIT = 20.0  # interpreter start-up in a namespace; bounds a hang only
MAX_FAILURE_SAMPLES = 10


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a run of the load generator saw."""

    sent: int
    ok: int
    failed: int
    seconds: float  # from the first request sent to the last one finished
    by_version: dict[str, int] = field(default_factory=dict)
    by_pod: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # error kind -> count
    samples: list[str] = field(default_factory=list)  # the first few failures, described

    @property
    def rate(self) -> float:
        """Requests sent per second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadReport:
        fields: dict[str, Any] = json.loads(text)
        return cls(**fields)

    def summary(self) -> str:
        versions = ", ".join(f"{version}: {count}" for version, count
                             in sorted(self.by_version.items()))
        return (f"{self.sent} requests in {self.seconds:.1f}s ({self.rate:.0f}/s), "
                f"{self.failed} failed; answered by version: {versions or 'none'}")


# --- the requests (inside the namespace) -----------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.sent = self.ok = 0
        self.versions: Counter[str] = Counter()
        self.pods: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.samples: list[str] = []

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if len(self.samples) < MAX_FAILURE_SAMPLES:
            self.samples.append(f"{kind}: {detail}")


def parse_answer(raw: bytes) -> dict[str, Any]:
    """The pod server's JSON from an HTTP response; ValueError when it is not one."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if not separator or len(status) < 2 or status[1] != b"200":
        raise ValueError(f"not an HTTP 200: {raw[:60]!r}")
    fields = json.loads(body)
    if not isinstance(fields, dict) or "pod" not in fields:
        raise ValueError(f"not a pod server answer: {body[:60]!r}")
    return fields


async def one_request(host: str, port: int, tally: Tally) -> None:
    request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kproxy-loadgen\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                raw = await reader.read()
            finally:
                writer.close()
        fields = parse_answer(raw)
    except TimeoutError:
        tally.fail("timeout", f"no answer within {REQUEST_TIMEOUT}s")
    except ConnectionRefusedError as error:
        tally.fail("refused", str(error))
    except (ConnectionResetError, BrokenPipeError) as error:
        tally.fail("reset", str(error))
    except OSError as error:
        tally.fail("error", f"{type(error).__name__}: {error}")
    except ValueError as error:
        tally.fail("bad-response", str(error))
    else:
        tally.ok += 1
        tally.pods[str(fields["pod"])] += 1
        tally.versions[str(fields.get("version", "?"))] += 1


async def generate(host: str, port: int, rate: float, duration: float,
                   stop: asyncio.Event | None = None) -> LoadReport:
    tally = Tally()
    interval = 1.0 / rate
    total = max(1, round(rate * duration))
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for index in range(total):
        if stop is not None and stop.is_set():
            break
        # On schedule, whatever the earlier requests are doing.
        await asyncio.sleep(max(0.0, started + index * interval - loop.time()))
        tasks.append(asyncio.create_task(one_request(host, port, tally)))
        tally.sent += 1
        if index == 0:
            print("STARTED", flush=True)
    await asyncio.gather(*tasks)
    return LoadReport(
        sent=tally.sent, ok=tally.ok, failed=sum(tally.failures.values()),
        seconds=round(loop.time() - started, 3), by_version=dict(tally.versions),
        by_pod=dict(tally.pods), failures=dict(tally.failures), samples=tally.samples,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {LOADGEN_MODULE}",
                                     description="HTTP requests at a fixed rate; a JSON report.")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    return args


async def _main(args: argparse.Namespace) -> LoadReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await generate(args.host, args.port, args.rate, args.duration, stop)


def main(argv: Sequence[str] | None = None) -> int:
    report = asyncio.run(_main(parse_args(argv)))
    print(report.to_json(), flush=True)
    return 0


# --- the host side ---------------------------------------------------------------------------


class LoadGenerator:
    """The load generator running in ``host``'s namespace until :meth:`wait`."""

    def __init__(self, host: LabHost, address: str, port: int, *, rate: float = 100.0,
                 duration: float = 20.0) -> None:
        self.host = host
        self.duration = duration
        self.proc: Popen = host.ns.popen_python(
            LOADGEN_MODULE, address, str(port), "--rate", str(rate), "--duration", str(duration),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_started(self) -> None:
        """Until the first request went out."""
        wait_for_line(self.proc, "STARTED", START_LIMIT)

    def stop(self) -> LoadReport:
        """End the run now (the requests under way are still counted); the report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self) -> LoadReport:
        """The report, once every request finished."""
        limit = self.duration + REQUEST_TIMEOUT + START_LIMIT
        try:
            out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.host.ns.stop(self.proc)
            raise RuntimeError(f"the load generator in {self.host.name} did not finish "
                               f"within {limit:g}s") from None
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        if self.proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
            raise RuntimeError(f"the load generator in {self.host.name} failed "
                               f"({self.proc.returncode}): {err.decode(errors='replace')[-500:]}")
        self.host.ns.stop(self.proc)
        return LoadReport.from_json(lines[-1])


if __name__ == "__main__":
    sys.exit(main())
