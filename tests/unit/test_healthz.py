"""/healthz and /livez status logic (kube-proxy's truth table), on a fake clock."""

from __future__ import annotations

import json

import pytest

from kproxy.clock import FakeClock
from kproxy.healthz import (
    TO_BE_DELETED_TAINT,
    FamilyHealth,
    Moment,
    ProxierHealth,
    go_time,
    healthz_response,
    livez_response,
    node_eligible,
    proxier_health,
)
from kproxy.model.types import NodeInfo

TIMEOUT = 60.0
NOW = Moment(1000.0, 1_700_000_000.0)


def at(seconds_ago: float) -> Moment:
    return Moment(NOW.monotonic - seconds_ago, NOW.wall - seconds_ago)


@pytest.mark.parametrize(
    ("families", "healthy", "last_updated"),
    [
        ({}, True, None),  # nothing synced yet
        ({"IPv4": FamilyHealth()}, True, None),
        # queued but never synced: kube-proxy does not judge a family before its first sync
        ({"IPv4": FamilyHealth(None, at(500))}, True, None),
        ({"IPv4": FamilyHealth(at(5), None)}, True, at(5)),
        ({"IPv4": FamilyHealth(at(100), at(59.9))}, True, at(100)),
        ({"IPv4": FamilyHealth(at(100), at(60))}, False, at(100)),  # exactly the timeout: late
        ({"IPv4": FamilyHealth(at(100), at(90))}, False, at(100)),
        # dual-stack: the newest update is reported while healthy ...
        ({"IPv4": FamilyHealth(at(7), None), "IPv6": FamilyHealth(at(3), at(1))}, True, at(3)),
        # ... and the late family's own update when one is late
        ({"IPv4": FamilyHealth(at(1), None), "IPv6": FamilyHealth(at(80), at(70))}, False, at(80)),
    ],
)
def test_proxier_health_truth_table(
    families: dict[str, FamilyHealth], healthy: bool, last_updated: Moment | None
) -> None:
    assert proxier_health(families, NOW, TIMEOUT) == (healthy, last_updated)


@pytest.mark.parametrize(
    ("node", "eligible"),
    [
        (NodeInfo("n1"), True),
        (NodeInfo("n1", being_deleted=True), False),
        (NodeInfo("n1", taints=((TO_BE_DELETED_TAINT, "NoSchedule"),)), False),
        (NodeInfo("n1", taints=(("node.kubernetes.io/unschedulable", "NoSchedule"),)), True),
        (NodeInfo("n1", taints=(("example.com/x", ""), (TO_BE_DELETED_TAINT, ""))), False),
    ],
)
def test_node_eligibility(node: NodeInfo, eligible: bool) -> None:
    assert node_eligible(node) is eligible


LATE = {"IPv4": FamilyHealth(at(200), at(100))}
FRESH = {"IPv4": FamilyHealth(at(200), None)}


@pytest.mark.parametrize(
    ("families", "eligible", "healthz", "livez"),
    [
        (FRESH, True, 200, 200),
        (FRESH, False, 503, 200),  # a node being deleted fails readiness, not liveness
        (LATE, True, 503, 503),
        (LATE, False, 503, 503),
    ],
)
def test_healthz_and_livez_codes(
    families: dict[str, FamilyHealth], eligible: bool, healthz: int, livez: int
) -> None:
    assert healthz_response(families, NOW, TIMEOUT, eligible).status == healthz
    assert livez_response(families, NOW, TIMEOUT).status == livez


def test_bodies_carry_kube_proxys_fields() -> None:
    healthy = json.loads(healthz_response(FRESH, NOW, TIMEOUT, True).body)
    # healthy: lastUpdated is reported as now, for compatibility with older releases
    assert healthy == {
        "lastUpdated": go_time(NOW),
        "currentTime": go_time(NOW),
        "nodeEligible": True,
    }
    late = json.loads(healthz_response(LATE, NOW, TIMEOUT, True).body)
    assert late["lastUpdated"] == go_time(at(200))
    ineligible = json.loads(healthz_response(FRESH, NOW, TIMEOUT, False).body)
    assert ineligible["nodeEligible"] is False
    assert ineligible["lastUpdated"] == go_time(at(200))
    assert json.loads(livez_response(LATE, NOW, TIMEOUT).body) == {
        "lastUpdated": go_time(at(200)),
        "currentTime": go_time(NOW),
    }


def test_go_time_format() -> None:
    assert go_time(Moment(5.0, 1_700_000_000.0)) == "2023-11-14 22:13:20 +0000 UTC"
    assert go_time(Moment(5.0, 1_700_000_000.25)) == "2023-11-14 22:13:20.25 +0000 UTC"
    assert go_time(Moment(17.5, 1_700_000_000.0), started=5.0) == (
        "2023-11-14 22:13:20 +0000 UTC m=+12.500000000"
    )
    assert go_time(None, started=5.0) == "0001-01-01 00:00:00 +0000 UTC"


async def test_proxier_health_over_time() -> None:
    clock = FakeClock()
    health = ProxierHealth(clock, timeout=60.0)
    health.queued_update()
    await clock.advance(100)
    assert health.livez().status == 200  # first sync still running: not judged yet
    health.updated()
    health.queued_update()
    await clock.advance(30)
    health.queued_update()  # a later change does not make the oldest one younger
    await clock.advance(29)
    assert health.livez().status == 200
    await clock.advance(1)
    assert health.livez().status == 503
    assert health.healthz().status == 503
    assert health.is_healthy() is False
    health.updated()
    assert health.healthz().status == 200
    assert health.livez_codes == {200: 2, 503: 1}
    assert health.healthz_codes == {503: 1, 200: 1}
    assert health.last_updated_wall == clock.wall()


def test_node_changes_and_deletion() -> None:
    health = ProxierHealth(FakeClock(), timeout=60.0)
    health.sync_node(None)  # not seen yet: eligible while starting
    assert health.healthz().status == 200
    health.sync_node(NodeInfo("n1", taints=((TO_BE_DELETED_TAINT, "NoSchedule"),)))
    assert health.healthz().status == 503
    assert health.livez().status == 200
    health.sync_node(NodeInfo("n1"))
    assert health.healthz().status == 200
    health.sync_node(None)  # the Node was deleted
    assert health.healthz().status == 503
    assert health.is_healthy() is True
