"""Informer handlers: a rejected update keeps the last good version of its object in force;
a delete or a relabelling still removes it."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from kproxy.feed import EndpointSliceFeed, NodeFeed, ServiceFeed
from kproxy.model.types import Protocol, ServicePortName
from kproxy.rejections import RejectionLog
from kproxy.state import StateTracker

HTTP = ServicePortName("default", "web", "http", Protocol.TCP)


def service_object(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    base.update(spec)
    return {"metadata": {"namespace": "default", "name": "web"}, "spec": base}


def slice_object(*ips: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "default",
            "name": "web-1",
            "labels": {"kubernetes.io/service-name": "web", **(labels or {})},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip]} for ip in ips],
    }


def node_object(zone: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": zone}},
        "spec": {"podCIDRs": ["10.244.0.0/24"]},
    }


@pytest.fixture
def tracker() -> StateTracker:
    return StateTracker()


@pytest.fixture
def rejections() -> RejectionLog:
    return RejectionLog()


def test_an_invalid_service_update_keeps_the_last_good_version(
    tracker: StateTracker, rejections: RejectionLog
) -> None:
    feed = ServiceFeed(tracker, rejections, "")
    feed.on_upsert(service_object())
    good = tracker.snapshot().services[HTTP]
    broken = service_object(ports=[{"name": "http", "port": 80, "targetPort": 8080},
                                   {"name": "http\x00", "port": 81}])
    feed.on_upsert(broken)  # a MODIFIED event, or the object in a relist
    assert tracker.snapshot().services == {HTTP: good}
    assert rejections.counts == {("Service", "invalid_name"): 1}
    feed.on_upsert(service_object(ports=[{"name": "http", "port": 8081}]))  # fixed
    assert tracker.snapshot().services[HTTP].port == 8081


def test_a_deleted_service_is_gone_even_after_an_invalid_update(
    tracker: StateTracker, rejections: RejectionLog
) -> None:
    feed = ServiceFeed(tracker, rejections, "")
    feed.on_upsert(service_object())
    feed.on_upsert(service_object(type="Magic"))
    feed.on_delete("default", "web")
    assert tracker.snapshot().services == {}


def test_a_service_never_valid_is_never_served(
    tracker: StateTracker, rejections: RejectionLog
) -> None:
    ServiceFeed(tracker, rejections, "").on_upsert(service_object(clusterIP="10.96.0.300",
                                                                  clusterIPs=None))
    assert tracker.snapshot().services == {}
    assert tracker.service_count == 0


@pytest.mark.parametrize(
    "labels",
    [{"service.kubernetes.io/headless": ""}, {"service.kubernetes.io/service-proxy-name": "x"}],
)
def test_a_service_relabelled_away_stops_being_served(
    tracker: StateTracker, rejections: RejectionLog, labels: dict[str, str]
) -> None:
    feed = ServiceFeed(tracker, rejections, "")
    feed.on_upsert(service_object())
    relabelled = service_object()
    relabelled["metadata"]["labels"] = labels
    feed.on_upsert(relabelled)
    assert tracker.snapshot().services == {}
    assert rejections.total == 0


def test_an_invalid_slice_update_keeps_the_last_good_endpoints(
    tracker: StateTracker, rejections: RejectionLog
) -> None:
    ServiceFeed(tracker, rejections, "").on_upsert(service_object())
    feed = EndpointSliceFeed(tracker, rejections, "")
    feed.on_upsert(slice_object("10.244.1.2", "10.244.1.3"))
    before = tracker.snapshot().endpoints_of(HTTP)
    assert [e.ip for e in before] == ["10.244.1.2", "10.244.1.3"]
    feed.on_upsert(slice_object("10.244.1.2", "127.0.0.1"))  # refused by the API server
    assert tracker.snapshot().endpoints_of(HTTP) == before
    assert rejections.counts == {("EndpointSlice", "invalid_ip"): 1}
    feed.on_delete("default", "web-1")
    assert tracker.snapshot().endpoints_of(HTTP) == ()


def test_a_slice_relabelled_away_stops_contributing(
    tracker: StateTracker, rejections: RejectionLog
) -> None:
    ServiceFeed(tracker, rejections, "").on_upsert(service_object())
    feed = EndpointSliceFeed(tracker, rejections, "")
    feed.on_upsert(slice_object("10.244.1.2"))
    feed.on_upsert(slice_object("10.244.1.2",
                                labels={"service.kubernetes.io/service-proxy-name": "x"}))
    assert tracker.snapshot().endpoints_of(HTTP) == ()
    assert rejections.total == 0


def test_a_rejected_node_update_keeps_the_previous_node_info(
    tracker: StateTracker, rejections: RejectionLog
) -> None:
    feed = NodeFeed(tracker, rejections, "node-a")
    feed.on_upsert(node_object("zone-1"))
    before = tracker.node
    assert before is not None and before.zone == "zone-1"
    bad = copy.deepcopy(node_object("zone-2"))
    bad["spec"]["podCIDRs"] = ["10.244.0.0/24", "10.244.1.0/24"]  # two of one family
    feed.on_upsert(bad)
    assert tracker.node == before
    assert rejections.counts == {("Node", "inconsistent"): 1}
    feed.on_upsert(node_object("zone-2"))
    assert tracker.node is not None and tracker.node.zone == "zone-2"


def test_a_rejected_object_is_logged_once_on_one_escaped_line(
    tracker: StateTracker, rejections: RejectionLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kproxy.rejected")
    feed = ServiceFeed(tracker, rejections, "")
    hostile = service_object()
    hostile["metadata"]["namespace"] = "ns\n\x1b[31mFAKE\x00"
    feed.on_upsert(hostile)
    feed.on_upsert(hostile)  # a resync: counted again, not logged again
    assert rejections.counts == {("Service", "invalid_name"): 2}
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert line.isprintable() and "\n" not in line and "\x1b" not in line and "\x00" not in line
    assert line.startswith("Service ns\\n\\x1b[31mFAKE\\x00/web: skipped object metadata.namespace")
    assert line.endswith("[invalid_name]")
