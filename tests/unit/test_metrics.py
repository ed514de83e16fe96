"""The metrics: kube-proxy's names, label sets and buckets, fed by the real tracker, health,
rejection log and iptables sync record; the userspace figures by a stand-in stats object."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kproxy.clock import FakeClock
from kproxy.healthz import ProxierHealth
from kproxy.iptables.proxier import SyncRecord
from kproxy.iptables.ruleset import Table
from kproxy.metrics import PROGRAMMING_BUCKETS, SYNC_DURATION_BUCKETS, ProxyMetrics
from kproxy.model.types import (
    Endpoint,
    EndpointSliceInfo,
    EndpointSlicePort,
    IPFamily,
    Protocol,
    Rejection,
    RejectReason,
    ServiceInfo,
    ServicePort,
    ServicePortName,
    ServiceType,
    TrafficPolicy,
)
from kproxy.proxier import SyncResult
from kproxy.rejections import RejectionLog
from kproxy.state import ResourceKind, StateTracker

NODE = "node-a"


def service(name: str, **policy: TrafficPolicy) -> ServiceInfo:
    port = ServicePort(
        name=ServicePortName("default", name, "http", Protocol.TCP),
        type=ServiceType.NODE_PORT,
        cluster_ips=("10.96.0.10",),
        port=80,
        protocol=Protocol.TCP,
        target_port=8080,
        node_port=30080,
        **policy,
    )
    return ServiceInfo("default", name, (port,))


def endpoint_slice(name: str, node: str, trigger: float | None = None) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace="default",
        name=f"{name}-1",
        service_name=name,
        address_type=IPFamily.IPV4,
        ports=(EndpointSlicePort("http", 8080, Protocol.TCP),),
        endpoints=(Endpoint(ip="10.244.1.5", port=0, node_name=node),),
        last_change_trigger_time=trigger,
    )


@dataclass
class Proxier:
    record: SyncRecord | None = None
    stats: object | None = None


@dataclass
class UserspaceStats:  # the shape of kproxy.userspace.stats.UserspaceStats
    active_connections: int = 0
    accepted_connections: int = 0
    rejected_connections: int = 0
    failed_connections: int = 0
    bytes_relayed: int = 0
    udp_sessions: int = 0
    udp_sessions_created: int = 0
    refused_endpoints: int = 0


def samples(metrics: ProxyMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def bucket_bounds(found: Iterable[tuple[str, tuple[tuple[str, str], ...]]], name: str) -> list[str]:
    return [dict(labels)["le"] for sample, labels in found if sample == f"{name}_bucket"]


@pytest.fixture
def parts() -> tuple[FakeClock, StateTracker, RejectionLog, ProxierHealth, Proxier]:
    clock = FakeClock()
    tracker = StateTracker()
    return clock, tracker, RejectionLog(), ProxierHealth(clock, 60.0), Proxier(SyncRecord())


def make_metrics(
    parts: tuple[FakeClock, StateTracker, RejectionLog, ProxierHealth, Proxier], mode: str
) -> ProxyMetrics:
    _clock, tracker, rejections, health, proxier = parts
    return ProxyMetrics(
        mode=mode, node_name=NODE, tracker=tracker, rejections=rejections, health=health,
        proxier=lambda: proxier, process_metrics=False,
    )


def test_change_counts_follow_the_tracker(
    parts: tuple[FakeClock, StateTracker, RejectionLog, ProxierHealth, Proxier],
) -> None:
    _clock, tracker, _rejections, _health, _proxier = parts
    metrics = make_metrics(parts, "iptables")
    tracker.upsert_service(service("web"))
    tracker.upsert_service(service("web"))  # an event that changes nothing: counted, not pending
    tracker.upsert_service(service("api"))
    tracker.upsert_endpoint_slice(endpoint_slice("web", NODE))
    found = samples(metrics)
    assert value(found, "kubeproxy_sync_proxy_rules_service_changes_total") == 3
    assert value(found, "kubeproxy_sync_proxy_rules_service_changes_pending") == 2
    assert value(found, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 1
    assert value(found, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 1
    tracker.sync_succeeded(tracker.snapshot())
    found = samples(metrics)
    assert value(found, "kubeproxy_sync_proxy_rules_service_changes_pending") == 0
    assert value(found, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 0
    assert value(found, "kubeproxy_sync_proxy_rules_service_changes_total") == 3


def test_sync_figures_from_the_iptables_record(
    parts: tuple[FakeClock, StateTracker, RejectionLog, ProxierHealth, Proxier],
) -> None:
    clock, tracker, _rejections, health, proxier = parts
    assert proxier.record is not None
    record = proxier.record
    metrics = make_metrics(parts, "iptables")
    tracker.upsert_service(service("web"))
    tracker.upsert_endpoint_slice(endpoint_slice("web", NODE, trigger=clock.wall() - 1.6))
    for kind in (ResourceKind.SERVICES, ResourceKind.ENDPOINT_SLICES):
        tracker.mark_listed(kind)
    snapshot = tracker.snapshot()
    # What IptablesProxier.sync records for a full sync of this snapshot:
    record.observe_duration(True, 0.003)
    record.programming_latencies.append(1.6)
    record.rules_per_table[(IPFamily.IPV4, Table.NAT)] = 40
    record.rules_per_table[(IPFamily.IPV6, Table.NAT)] = 2
    record.rules_per_table[(IPFamily.IPV4, Table.FILTER)] = 7
    record.restore_failures_full, record.restore_failures_partial = 1, 2
    metrics.observe_sync(snapshot, SyncResult(True, True, 1, 1), seconds=99.0)
    record.observe_duration(False, 0.0005)
    metrics.observe_sync(snapshot, replace(SyncResult(True, False, 1, 1)), seconds=99.0)
    metrics.observe_sync(snapshot, SyncResult(False, False, 1, 1, "boom"), seconds=99.0)
    health.queued_update()
    health.updated()
    found = samples(metrics)
    assert value(found, "kubeproxy_sync_proxy_rules_duration_seconds_count") == 2
    assert value(found, "kubeproxy_sync_proxy_rules_duration_seconds_sum") == pytest.approx(0.0035)
    assert value(found, "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket", le="0.004") == 1
    assert value(found, "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket", le="0.002") == 0
    assert value(found, "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket",
                 le="0.001") == 1
    # the trigger time is taken once per sync that carried it (two syncs here)
    assert value(found, "kubeproxy_network_programming_duration_seconds_bucket", le="2") == 2
    assert value(found, "kubeproxy_network_programming_duration_seconds_bucket", le="1") == 0
    assert value(found, "kubeproxy_sync_proxy_rules_iptables_total", table="nat") == 42
    assert value(found, "kubeproxy_sync_proxy_rules_iptables_total", table="filter") == 7
    assert value(found, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") == 3
    assert value(found, "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total") == 2
    assert value(found, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == clock.wall()
    assert value(found, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds") == clock.wall()
    assert bucket_bounds(found, "kubeproxy_sync_proxy_rules_duration_seconds") == [
        "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
        "0.512", "1.024", "2.048", "4.096", "8.192", "16.384", "+Inf"]
    bounds = bucket_bounds(found, "kubeproxy_network_programming_duration_seconds")
    assert bounds[:5] == ["0", "0.25", "0.5", "1", "2"] and bounds[-3:] == ["270", "300", "+Inf"]
    assert len(bounds) == len(PROGRAMMING_BUCKETS) + 1 == 82
    assert len(SYNC_DURATION_BUCKETS) == 15


def test_services_without_local_endpoints(
    parts: tuple[FakeClock, StateTracker, RejectionLog, ProxierHealth, Proxier],
) -> None:
    _clock, tracker, _rejections, _health, _proxier = parts
    metrics = make_metrics(parts, "iptables")
    local = TrafficPolicy.LOCAL
    tracker.upsert_service(service("both", internal_traffic_policy=local,
                                   external_traffic_policy=local))
    tracker.upsert_service(service("ext", external_traffic_policy=local))
    tracker.upsert_service(service("served-here", external_traffic_policy=local))
    tracker.upsert_service(service("no-endpoints", internal_traffic_policy=local))
    tracker.upsert_service(service("cluster"))
    for name in ("both", "ext", "cluster"):
        tracker.upsert_endpoint_slice(endpoint_slice(name, "node-b"))
    tracker.upsert_endpoint_slice(endpoint_slice("served-here", NODE))
    metrics.observe_sync(tracker.snapshot(), SyncResult(True, True, 5, 4), seconds=0.01)
    found = samples(metrics)
    name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total"
    assert value(found, name, traffic_policy="internal") == 1
    assert value(found, name, traffic_policy="external") == 2
    # Later syncs take only the changed ports into account, and keep the others' counts.
    tracker.sync_succeeded(tracker.snapshot())
    tracker.upsert_endpoint_slice(replace(endpoint_slice("both", "node-b"), name="both-2",
                                          endpoints=(Endpoint("10.244.0.9", 0, node_name=NODE),)))
    tracker.delete_service(service("ext").key)
    metrics.observe_sync(tracker.snapshot(), SyncResult(True, False, 4, 5), seconds=0.01)
    found = samples(metrics)
    assert value(found, name, traffic_policy="internal") == 0
    assert value(found, name, traffic_policy="external") == 0
    tracker.sync_succeeded(tracker.snapshot())
    tracker.upsert_service(service("ext", external_traffic_policy=local))
    metrics.observe_sync(tracker.snapshot(), SyncResult(True, False, 5, 5), seconds=0.01)
    assert value(samples(metrics), name, traffic_policy="external") == 1


def test_health_answers_rejections_and_userspace_stats(
    parts: tuple[FakeClock, StateTracker, RejectionLog, ProxierHealth, Proxier],
) -> None:
    _clock, _tracker, rejections, health, proxier = parts
    proxier.record = None
    proxier.stats = UserspaceStats(3, 10, 1, 2, 4096, 1, 5, 2)
    metrics = make_metrics(parts, "userspace")
    health.healthz()
    health.healthz()
    health.livez()
    bad_port = Rejection("Service", "default", "bad", "spec.ports[0].port", "out of range",
                         True, RejectReason.INVALID_PORT)
    bad_name = Rejection("Service", "default", "bad", "metadata.name", "not a label",
                         True, RejectReason.INVALID_NAME)
    rejections.record([bad_port])
    rejections.record([bad_port])  # seen again on a resync: counted again
    rejections.record([bad_name])
    rejections.record([Rejection("EndpointSlice", "default", "s", "endpoints[0]", "bad IP",
                                 True, RejectReason.INVALID_IP)])
    found = samples(metrics)
    assert value(found, "kubeproxy_proxy_healthz_total", code="200") == 2
    assert value(found, "kubeproxy_proxy_livez_total", code="200") == 1
    assert value(found, "kproxy_rejected_objects_total", kind="Service",
                 reason="invalid_port") == 2
    assert value(found, "kproxy_rejected_objects_total", kind="Service",
                 reason="invalid_name") == 1
    assert value(found, "kproxy_rejected_objects_total", kind="EndpointSlice",
                 reason="invalid_ip") == 1
    assert {dict(labels)["reason"] for name, labels in found
            if name == "kproxy_rejected_objects_total"} == {"invalid_port", "invalid_name",
                                                             "invalid_ip"}
    assert value(found, "kproxy_userspace_active_connections") == 3
    assert value(found, "kproxy_userspace_accepted_connections_total") == 10
    assert value(found, "kproxy_userspace_rejected_connections_total") == 1
    assert value(found, "kproxy_userspace_failed_connections_total") == 2
    assert value(found, "kproxy_userspace_bytes_relayed_total") == 4096
    assert value(found, "kproxy_userspace_udp_sessions") == 1
    assert value(found, "kproxy_userspace_udp_sessions_created_total") == 5
    # iptables-only families are absent in userspace mode
    assert not any(n.startswith("kubeproxy_sync_proxy_rules_iptables") for n, _ in found)
    assert not any(n.startswith("kubeproxy_sync_full_proxy_rules") for n, _ in found)
