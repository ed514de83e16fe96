"""The proxy's own health: ``/healthz`` and ``/livez`` on ``--healthz-bind-address``.

kube-proxy's semantics (pkg/proxy/healthcheck/proxier_health.go, 1.33):

* A sync is *queued* when a change arrives that needs the rules rewritten; it is *updated*
  when a sync succeeds. The proxy is unhealthy once a queued change has waited
  ``health_timeout`` (2 x ``--iptables-sync-period``) or longer without a successful sync.
* This is tracked per IP family; a family only counts once it has synced successfully at
  least once (so a proxy still doing its first sync is healthy), and the first late family
  makes the whole proxy unhealthy.
* ``/livez`` answers from that alone. ``/healthz`` is also 503 when this Node is being
  deleted or carries the ``ToBeDeletedByClusterAutoscaler`` taint (``nodeEligible: false``),
  so load balancers drain the node before it goes.
* The JSON body has ``lastUpdated`` and ``currentTime`` (and ``nodeEligible`` on /healthz);
  when healthy, ``lastUpdated`` equals ``currentTime``, as kube-proxy reports it for
  compatibility with older releases. Times are in Go's ``time.Time`` text form (with the
  monotonic ``m=`` reading Go adds), in UTC.

The status logic is pure (:func:`proxier_health`, :func:`healthz_response`,
:func:`livez_response`); :class:`ProxierHealth` holds the state on an injected clock and
:class:`HealthServer` is a thin aiohttp layer over it.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from aiohttp import web

from kproxy.clock import Clock
from kproxy.httpserve import ListeningApp
from kproxy.model.types import NodeInfo

TO_BE_DELETED_TAINT: Final = "ToBeDeletedByClusterAutoscaler"
# kproxy programs every IP family in one sync, so one entry stands for all of them; the
# logic below still takes one entry per family, as kube-proxy keeps them.
ALL_FAMILIES: Final = "all"
_GO_ZERO_TIME: Final = "0001-01-01 00:00:00 +0000 UTC"


@dataclass(frozen=True, slots=True)
class Moment:
    """One instant on both clocks: monotonic for ages, wall for what is shown."""

    monotonic: float
    wall: float


@dataclass(frozen=True, slots=True)
class FamilyHealth:
    last_updated: Moment | None = None  # the last successful sync
    oldest_pending: Moment | None = None  # the oldest change queued since then


@dataclass(frozen=True, slots=True)
class HealthResponse:
    status: int
    body: str


def proxier_health(
    families: Mapping[str, FamilyHealth], now: Moment, timeout: float
) -> tuple[bool, Moment | None]:
    """(healthy, lastUpdated): kube-proxy's ``isHealthy``, without the Node's part."""
    newest: Moment | None = None
    for family in families.values():
        if family.last_updated is None:
            continue  # never synced yet: not judged (start-up)
        if newest is None or family.last_updated.wall > newest.wall:
            newest = family.last_updated
        if family.oldest_pending is None:
            continue  # fully synced
        if now.monotonic - family.oldest_pending.monotonic < timeout:
            continue  # a change is queued, but not late yet
        return False, family.last_updated
    return True, newest


def node_eligible(node: NodeInfo) -> bool:
    """A Node that is neither being deleted nor marked for deletion by the autoscaler."""
    if node.being_deleted:
        return False
    return all(key != TO_BE_DELETED_TAINT for key, _effect in node.taints)


def go_time(moment: Moment | None, started: float | None = None) -> str:
    """Go's ``time.Time.String()`` in UTC: ``2024-06-11 14:23:21.104875 +0000 UTC``, and,
    as for a time read from Go's clock, ``m=+12.500000000`` (seconds on the monotonic clock
    since ``started``, the process's start) when ``started`` is given."""
    if moment is None:
        return _GO_ZERO_TIME
    stamp = datetime.datetime.fromtimestamp(moment.wall, tz=datetime.UTC)
    text = stamp.strftime("%Y-%m-%d %H:%M:%S")
    fraction = f"{stamp.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    text += " +0000 UTC"
    if started is not None:
        text += f" m={moment.monotonic - started:+.9f}"
    return text


def healthz_response(
    families: Mapping[str, FamilyHealth], now: Moment, timeout: float, eligible: bool,
    started: float | None = None,
) -> HealthResponse:
    healthy, last_updated = proxier_health(families, now, timeout)
    healthy = healthy and eligible
    shown = now if healthy else last_updated
    body = (
        f'{{"lastUpdated": "{go_time(shown, started)}",'
        f'"currentTime": "{go_time(now, started)}", "nodeEligible": {str(eligible).lower()}}}'
    )
    return HealthResponse(200 if healthy else 503, body)


def livez_response(
    families: Mapping[str, FamilyHealth], now: Moment, timeout: float,
    started: float | None = None,
) -> HealthResponse:
    healthy, last_updated = proxier_health(families, now, timeout)
    shown = now if healthy else last_updated
    body = (
        f'{{"lastUpdated": "{go_time(shown, started)}",'
        f'"currentTime": "{go_time(now, started)}"}}'
    )
    return HealthResponse(200 if healthy else 503, body)


class ProxierHealth:
    """The proxy's health state: what the runner queued and synced, and the Node.

    ``queued_update`` when a change needs a sync, ``updated`` when a sync succeeded,
    ``sync_node`` whenever this node's Node may have changed.
    """

    def __init__(
        self, clock: Clock, timeout: float, families: Iterable[str] = (ALL_FAMILIES,)
    ) -> None:
        self._clock = clock
        self.timeout = timeout
        self._started = clock.monotonic()
        self._families = {family: FamilyHealth() for family in families}
        # Eligible while starting up, until a Node says otherwise (as kube-proxy).
        self._eligible = True
        self._node_seen = False
        self.last_queued_wall: float | None = None
        self.last_updated_wall: float | None = None
        # Answers given, by endpoint and HTTP code (kubeproxy_proxy_healthz_total{code}).
        self.healthz_codes: Counter[int] = Counter()
        self.livez_codes: Counter[int] = Counter()

    def now(self) -> Moment:
        return Moment(self._clock.monotonic(), self._clock.wall())

    def queued_update(self) -> None:
        now = self.now()
        self.last_queued_wall = now.wall
        for name, family in self._families.items():
            if family.oldest_pending is None:
                self._families[name] = replace(family, oldest_pending=now)

    def updated(self) -> None:
        now = self.now()
        self.last_updated_wall = now.wall
        for name in self._families:
            self._families[name] = FamilyHealth(last_updated=now)

    def sync_node(self, node: NodeInfo | None) -> None:
        if node is None:
            # The Node object is gone: this node is being removed from the cluster.
            if self._node_seen:
                self._eligible = False
            return
        self._node_seen = True
        self._eligible = node_eligible(node)

    @property
    def node_eligible(self) -> bool:
        return self._eligible

    @property
    def families(self) -> Mapping[str, FamilyHealth]:
        return dict(self._families)

    def is_healthy(self) -> bool:
        """The proxy's own health, ignoring the Node (for the service health check ports)."""
        return proxier_health(self._families, self.now(), self.timeout)[0]

    def healthz(self) -> HealthResponse:
        response = healthz_response(
            self._families, self.now(), self.timeout, self._eligible, self._started
        )
        self.healthz_codes[response.status] += 1
        return response

    def livez(self) -> HealthResponse:
        response = livez_response(self._families, self.now(), self.timeout, self._started)
        self.livez_codes[response.status] += 1
        return response


def health_application(health: ProxierHealth) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return _json(health.healthz())

    async def livez(_request: web.Request) -> web.Response:
        return _json(health.livez())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


class HealthServer(ListeningApp):
    """``/healthz`` and ``/livez`` of one :class:`ProxierHealth` on one address."""

    def __init__(self, health: ProxierHealth, address: str) -> None:
        super().__init__(health_application(health), address)


def _json(response: HealthResponse) -> web.Response:
    return web.Response(
        status=response.status,
        text=response.body,
        content_type="application/json",
        headers={"X-Content-Type-Options": "nosniff"},
    )
