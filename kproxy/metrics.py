"""Prometheus metrics on ``--metrics-bind-address``: kube-proxy's names and buckets, plus
kproxy's own (``kproxy_userspace_*``, rejected objects).

Everything is read from the parts that already keep the figures — the state tracker
(change counts), the proxy health (queued and synced timestamps, probe answers), the
rejection log, the iptables proxier's ``record`` and the userspace proxier's ``stats`` —
when Prometheus scrapes, by one collector on a registry of its own (never the global
one). Per-sync observations (durations, network programming latency, services without
local endpoints) are taken by :meth:`ProxyMetrics.observe_sync` after each sync.

The label sets are kube-proxy 1.33's: no ``ip_family`` label (kproxy programs every family
in one sync), and the rule counts of a table are summed over the families.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kproxy.config.record import ProxyConfig
from kproxy.configz import CONFIGZ_CONTENT_TYPE, configz_json
from kproxy.healthz import ProxierHealth
from kproxy.httpserve import ListeningApp
from kproxy.iptables.topology import categorize_endpoints
from kproxy.model.types import ServicePortName
from kproxy.proxier import SyncResult
from kproxy.rejections import RejectionLog
from kproxy.skipped import SkipKind, SkippedPorts
from kproxy.state import Snapshot, StateTracker

# kube-proxy: ExponentialBuckets(0.001, 2, 15) for every sync duration histogram.
SYNC_DURATION_BUCKETS: Final = tuple(0.001 * 2**step for step in range(15))
# kube-proxy: MergeBuckets(Linear(0.25, 0.25, 2), Linear(1, 1, 59), Linear(60, 5, 12),
# Linear(120, 30, 7)); MergeBuckets starts its result with a 0 bucket.
PROGRAMMING_BUCKETS: Final = (
    0.0, 0.25, 0.5,
    *(float(s) for s in range(1, 60)),
    *(float(s) for s in range(60, 120, 5)),
    *(float(s) for s in range(120, 301, 30)),
)
# The text format generate_latest writes, labelled as kube-proxy labels it (newer
# prometheus_client versions would announce 1.0.0, which older scrapers do not know).
EXPOSITION_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
USERSPACE_GAUGES: Final = (
    ("active_connections", "TCP connections being relayed now"),
    ("udp_sessions", "UDP flows being relayed now"),
)
USERSPACE_COUNTERS: Final = (
    ("accepted_connections", "TCP connections accepted on service ports"),
    ("rejected_connections", "TCP connections refused for want of a usable endpoint"),
    ("failed_connections", "TCP connections whose endpoint could not be reached"),
    ("bytes_relayed", "bytes relayed in either direction, TCP and UDP"),
    ("udp_sessions_created", "UDP flows started"),
    ("refused_endpoints", "endpoint connection attempts that were refused or timed out"),
)


@dataclass
class Buckets:
    """A cumulative histogram kept by hand, to be exposed by a collector."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.observations += 1

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = list(itertools.accumulate(self.counts))
        buckets = [(_bound(b), float(c)) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", float(self.observations)))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


def no_local_endpoints(snapshot: Snapshot, port_name: ServicePortName,
                       node_name: str) -> tuple[bool, bool]:
    """(internal, external): whether the port has a Local policy for that traffic, endpoints
    somewhere in the cluster and none on this node (its traffic is dropped here), as
    kube-proxy counts for ``sync_proxy_rules_no_local_endpoints_total``."""
    port = snapshot.services.get(port_name)
    if port is None:
        return False, False
    internal_local, external_local = port.internal_policy_local, port.external_policy_local
    if not (internal_local or external_local):
        return False, False
    # Local endpoints depend only on this node's name, not on topology.
    categories = categorize_endpoints(
        snapshot.endpoints_of(port_name),
        uses_cluster=False, uses_local=True, node_name=node_name, zone="",
    )
    if categories.has_any and not categories.local:
        return internal_local, external_local
    return False, False


class ProxyMetrics:
    """The metrics of one ``kproxy run``; ``proxier`` is asked for on every scrape."""

    def __init__(
        self,
        *,
        mode: str,
        node_name: str,
        tracker: StateTracker,
        rejections: RejectionLog,
        health: ProxierHealth,
        proxier: Callable[[], object],
        process_metrics: bool = True,
    ) -> None:
        self.mode = mode
        self._node_name = node_name
        self._tracker = tracker
        self._rejections = rejections
        self._health = health
        self._proxier = proxier
        self.sync_durations = Buckets(SYNC_DURATION_BUCKETS)
        self.full_sync_durations = Buckets(SYNC_DURATION_BUCKETS)
        self.partial_sync_durations = Buckets(SYNC_DURATION_BUCKETS)
        self.programming_latency = Buckets(PROGRAMMING_BUCKETS)
        self.no_local_endpoints = (0, 0)
        # The ports counted there; kept per port so that a sync costs only its changes.
        self._no_local_ports: dict[ServicePortName, tuple[bool, bool]] = {}
        self._observed_a_sync = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ProxyCollector(self))
        if process_metrics:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    def observe_sync(self, snapshot: Snapshot, result: SyncResult, seconds: float) -> None:
        """Take one finished sync's figures; ``seconds`` is its duration as timed outside."""
        if not result.ok:
            return
        record = getattr(self._proxier(), "record", None)
        durations = getattr(record, "full_durations" if result.full else "partial_durations", [])
        duration = durations[-1] if durations else seconds
        self.sync_durations.observe(duration)
        (self.full_sync_durations if result.full else self.partial_sync_durations).observe(
            duration
        )
        latencies = list(getattr(record, "programming_latencies", []))
        count = len(snapshot.trigger_times)
        if record is not None:
            taken: Iterable[float] = latencies[len(latencies) - min(count, len(latencies)):]
        else:
            wall = self._health.now().wall
            taken = (max(0.0, wall - t) for t in snapshot.trigger_times.values())
        for latency in taken:
            self.programming_latency.observe(latency)
        self._count_no_local_endpoints(snapshot)

    def _count_no_local_endpoints(self, snapshot: Snapshot) -> None:
        # A snapshot's changes are those since the last successful sync, and only successful
        # syncs are observed, so after the first every port's change is seen here.
        names = snapshot.changed if self._observed_a_sync else snapshot.services.keys()
        self._observed_a_sync = True
        for port_name in names:
            flags = no_local_endpoints(snapshot, port_name, self._node_name)
            if any(flags):
                self._no_local_ports[port_name] = flags
            else:
                self._no_local_ports.pop(port_name, None)
        counted = self._no_local_ports.values()
        self.no_local_endpoints = (sum(i for i, _ in counted), sum(e for _, e in counted))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _ProxyCollector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        yield from _sync_families(m)
        yield from _change_families(m._tracker)
        yield from _health_families(m._health)
        proxier = m._proxier()
        record = getattr(proxier, "record", None)
        if record is not None:
            yield from _iptables_families(record)
        stats = getattr(proxier, "stats", None)
        if stats is not None:
            yield from _userspace_families(stats)
        skipped = getattr(proxier, "skipped", None)
        if isinstance(skipped, SkippedPorts):
            yield from _skipped_families(skipped)
        rejected = CounterMetricFamily(
            "kproxy_rejected_objects",
            "API objects or fields skipped because they cannot be honoured, by kind and "
            "reason code (counted on every sight)",
            labels=["kind", "reason"],
        )
        for (kind, reason), count in sorted(m._rejections.counts.items()):
            rejected.add_metric([kind, reason], count)
        yield rejected


def _sync_families(m: ProxyMetrics) -> Iterator[Metric]:
    yield m.sync_durations.family(
        "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds"
    )
    if m.mode == "iptables":
        yield m.full_sync_durations.family(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        )
        yield m.partial_sync_durations.family(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        )
    yield m.programming_latency.family(
        "kubeproxy_network_programming_duration_seconds",
        "In Cluster Network Programming Latency in seconds",
    )
    no_local = GaugeMetricFamily(
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "Number of services with a Local traffic policy and no endpoints",
        labels=["traffic_policy"],
    )
    internal, external = m.no_local_endpoints
    no_local.add_metric(["internal"], internal)
    no_local.add_metric(["external"], external)
    yield no_local


def _change_families(tracker: StateTracker) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "Pending proxy rules Endpoint changes", value=tracker.pending_endpoint_changes,
    )
    yield CounterMetricFamily(
        "kubeproxy_sync_proxy_rules_endpoint_changes",
        "Cumulative proxy rules Endpoint changes", value=tracker.endpoint_changes_total,
    )
    yield GaugeMetricFamily(
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "Pending proxy rules Service changes", value=tracker.pending_service_changes,
    )
    yield CounterMetricFamily(
        "kubeproxy_sync_proxy_rules_service_changes",
        "Cumulative proxy rules Service changes", value=tracker.service_changes_total,
    )


def _health_families(health: ProxierHealth) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "The last time proxy rules were successfully synced",
        value=health.last_updated_wall or 0.0,
    )
    yield GaugeMetricFamily(
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "The last time a sync of proxy rules was queued",
        value=health.last_queued_wall or 0.0,
    )
    for endpoint, codes in (("healthz", health.healthz_codes), ("livez", health.livez_codes)):
        family = CounterMetricFamily(
            f"kubeproxy_proxy_{endpoint}", f"Cumulative proxy {endpoint} HTTP status",
            labels=["code"],
        )
        for code, count in sorted(codes.items()):
            family.add_metric([str(code)], count)
        yield family


def _iptables_families(record: Any) -> Iterator[Metric]:
    full_failures = int(getattr(record, "restore_failures_full", 0))
    partial_failures = int(getattr(record, "restore_failures_partial", 0))
    # kube-proxy counts every failed restore here, partial ones also in the next metric.
    yield CounterMetricFamily(
        "kubeproxy_sync_proxy_rules_iptables_restore_failures",
        "Cumulative proxy iptables restore failures", value=full_failures + partial_failures,
    )
    yield CounterMetricFamily(
        "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
        "Cumulative proxy iptables partial restore failures", value=partial_failures,
    )
    per_table: dict[str, int] = {}
    for (_family, table), rules in dict(getattr(record, "rules_per_table", {})).items():
        per_table[str(table)] = per_table.get(str(table), 0) + int(rules)
    rules_total = GaugeMetricFamily(
        "kubeproxy_sync_proxy_rules_iptables_total",
        "Total number of iptables rules owned by kube-proxy", labels=["table"],
    )
    for table, rules in sorted(per_table.items()):
        rules_total.add_metric([table], rules)
    yield rules_total


def _skipped_families(skipped: SkippedPorts) -> Iterator[Metric]:
    started = CounterMetricFamily(
        "kproxy_sync_proxy_rules_skipped_service_ports",
        "Service ports the mode left out (a string its payload cannot hold, or something it "
        "cannot serve), by kind; counted when a port starts being skipped or its reason changes",
        labels=["kind"],
    )
    now = GaugeMetricFamily(
        "kproxy_skipped_service_ports", "Service ports the mode leaves out now, by kind",
        labels=["kind"],
    )
    current = Counter(reason.kind for reason in skipped.current.values())
    for kind in SkipKind:
        started.add_metric([kind.value], skipped.counts[kind])
        now.add_metric([kind.value], current[kind])
    yield started
    yield now


def _userspace_families(stats: object) -> Iterator[Metric]:
    for name, documentation in USERSPACE_GAUGES:
        value = getattr(stats, name, None)
        if value is not None:
            yield GaugeMetricFamily(f"kproxy_userspace_{name}", documentation, value=value)
    for name, documentation in USERSPACE_COUNTERS:
        value = getattr(stats, name, None)
        if value is not None:
            yield CounterMetricFamily(f"kproxy_userspace_{name}", documentation, value=value)


def _bound(value: float) -> str:
    """A bucket bound as Go's client writes it (``1``, ``0.25``), not Python's ``1.0``."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def metrics_application(
    metrics: ProxyMetrics, config: ProxyConfig | None = None
) -> web.Application:
    """``/metrics``, ``/proxyMode``, ``/healthz`` and (given ``config``) ``/configz``, as
    kube-proxy's metrics server."""

    async def scrape(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = EXPOSITION_CONTENT_TYPE
        return response

    async def proxy_mode(_request: web.Request) -> web.Response:
        return web.Response(
            text=metrics.mode, content_type="text/plain",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok", content_type="text/plain")

    app = web.Application()
    if config is not None:
        document = configz_json(config)

        async def configz(_request: web.Request) -> web.Response:
            return web.Response(
                body=document,
                headers={"Content-Type": CONFIGZ_CONTENT_TYPE,
                         "X-Content-Type-Options": "nosniff"},
            )

        app.router.add_get("/configz", configz)
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/proxyMode", proxy_mode)
    app.router.add_get("/healthz", healthz)
    return app


class MetricsServer(ListeningApp):
    def __init__(
        self, metrics: ProxyMetrics, address: str, config: ProxyConfig | None = None
    ) -> None:
        super().__init__(metrics_application(metrics, config), address)
