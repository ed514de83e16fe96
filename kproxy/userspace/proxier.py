"""userspace mode: a listener per service port, and portal rules that send its traffic there.

Each sync, per IP family: select every TCP and UDP service port's targets as iptables mode
would (:mod:`.selection`), open the listeners that are missing and hand every listener its
targets, write the portal rules (:mod:`.portal`) in one restore transaction, and only then
close the listeners no rule points to any more. A failed restore leaves the old rules in
place and their listeners open; the next sync writes again.

A sync writes only when the payload differs from the last one written, except every
``sync_period`` (a flushed table is repaired then). The first successful sync removes
iptables mode's rules, so that a node switching modes has no window without forwarding.
``close()`` stops accepting, lets established connections run for the drain grace, then
removes the portal rules.

SCTP ports are not relayed (kube-proxy's userspace mode had no SCTP either), and a port
with a string the portal rules cannot hold (:mod:`kproxy.renderable`) is left out: each is
logged once (:mod:`kproxy.skipped`) and left alone, and every other port is served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from typing import Protocol as TypingProtocol

from kproxy.clock import Clock
from kproxy.config.record import ProxyConfig
from kproxy.healthcheck import ServiceHealthServer
from kproxy.healthcheck_status import health_check_ports, local_ready_endpoint_counts
from kproxy.iptables.backend import Backend, BackendError
from kproxy.iptables.cleanup import CleanupReport, cleanup, userspace_mode_chain
from kproxy.iptables.context import PlanContext, plan_context
from kproxy.iptables.restore import render_full
from kproxy.iptables.serviceview import family_endpoints, family_view
from kproxy.model.types import Endpoint, IPFamily, Protocol, ServicePort, ServicePortName
from kproxy.proxier import SyncResult
from kproxy.renderable import endpoints_problem, port_problem
from kproxy.skipped import SkipKind, SkippedPorts, SkipReason
from kproxy.state import Snapshot
from kproxy.userspace.limits import ConnectionBudget, RelayLimits
from kproxy.userspace.portal import PortRules, assemble_portals, plan_port
from kproxy.userspace.ports import PortRange
from kproxy.userspace.selection import ListenerKey, PortSelection, select_port
from kproxy.userspace.stats import UserspaceStats
from kproxy.userspace.targets import Target

log = logging.getLogger(__name__)

RELAYED_PROTOCOLS = frozenset({Protocol.TCP, Protocol.UDP})


class Listener(TypingProtocol):
    """What the proxier needs of a data-plane listener (:mod:`.listener`)."""

    @property
    def port(self) -> int: ...

    def update(self, targets: tuple[Target, ...], affinity_timeout: float | None) -> None: ...

    async def close(self, grace: float = 0.0) -> None: ...


class ListenerFactory(TypingProtocol):
    async def __call__(self, key: ListenerKey) -> Listener: ...


class FlowForgetter(TypingProtocol):
    """Deletes the UDP conntrack flows redirected to a closed listener (:mod:`.udpflows`)."""

    async def __call__(self, family: IPFamily, listener_port: int,
                       service_ports: Iterable[int]) -> None: ...


@dataclass
class _Open:
    listener: Listener
    targets: tuple[Target, ...] | None = None  # what it was last given
    affinity_timeout: float | None = None
    frontend_ports: tuple[int, ...] = ()  # the service port and NodePort redirected to it


class UserspaceProxier:
    def __init__(
        self,
        config: ProxyConfig,
        backend: Backend,
        *,
        clock: Clock,
        limits: RelayLimits,
        families: tuple[IPFamily, ...] | None = None,
        health: ServiceHealthServer | None = None,
        listener_factory: ListenerFactory | None = None,
        remove_other_mode: Callable[[], CleanupReport] | None = None,
        forget_udp_flows: FlowForgetter | None = None,
    ) -> None:
        self._config = config
        self._backend = backend
        self._clock = clock
        self._limits = limits
        self._families = families or backend.families()
        self._health = health
        self.stats = UserspaceStats()
        self._budget = ConnectionBudget.for_limits(limits)
        port_range = (PortRange(*config.userspace_port_range)
                      if config.userspace_port_range is not None else None)
        self._open_listener = listener_factory or DataPlaneListeners(
            clock=clock, limits=limits, budget=self._budget, stats=self.stats,
            port_range=port_range)
        self._remove_other_mode = remove_other_mode
        self._forget_udp_flows = forget_udp_flows
        self._listeners: dict[ListenerKey, _Open] = {}
        self._written: dict[IPFamily, str] = {}
        self._plans: dict[IPFamily, _FamilyPlans] = {}
        self._wanted: dict[ListenerKey, _Wanted] = {}  # every listener a plan asks for
        self._replan_all = True
        self._last_full: float | None = None
        self.skipped = SkippedPorts()
        self._closed = False
        self.last_error = ""

    @property
    def listener_ports(self) -> Mapping[ListenerKey, int]:
        """The port of every open listener (for logs and tests)."""
        return {key: entry.listener.port for key, entry in self._listeners.items()}

    async def sync(self, snapshot: Snapshot) -> SyncResult:
        started = time.perf_counter()
        now = self._clock.monotonic()
        full = self._last_full is None or now - self._last_full >= self._config.sync_period
        # Only the changed ports are looked at, unless anything could be stale.
        only = None if full or snapshot.node_changed or self._replan_all else snapshot.changed
        touched: dict[ListenerKey, _Wanted] = {}
        dropped: set[ListenerKey] = set()
        for family in self._families:
            self._select(family, snapshot, only, touched, dropped)
        self._report_skipped()
        errors = await self._open_and_update(touched)
        self._replan_all = bool(errors)
        try:
            for family in self._families:
                await self._write(family, snapshot, full)
        except (BackendError, OSError, ValueError) as error:
            self._written.clear()  # unknown what the kernel holds now: write again next time
            self._replan_all = True
            message = f"{type(error).__name__}: {error}"
            self.last_error = message
            return SyncResult(False, full, len(snapshot.services), 0, error=message)
        if full:
            self._last_full = now
        # No rule points to these any more: close them and release their ports.
        candidates = self._listeners if only is None else dropped
        stale = [(key, self._listeners.pop(key)) for key in list(candidates)
                 if key not in self._wanted and key in self._listeners]
        await asyncio.gather(*(entry.listener.close() for _, entry in stale))
        if self._forget_udp_flows is not None:
            for key, entry in stale:
                if key.name.protocol is Protocol.UDP:
                    await self._forget_udp_flows(key.family, entry.listener.port,
                                                 entry.frontend_ports)
        await self._after_sync(snapshot)
        endpoint_count = sum(len(e) for e in snapshot.endpoints.values())
        log.log(
            logging.INFO - 2,
            "sync (%s) took %.1f ms: %d service ports, %d endpoints, %d listeners, %d changed",
            "full" if full else "partial", (time.perf_counter() - started) * 1000,
            len(snapshot.services), endpoint_count, len(self._listeners), len(snapshot.changed),
        )
        if errors:
            # Everything else is forwarded; the ports without a listener are retried.
            self.last_error = "; ".join(errors)
            return SyncResult(False, full, len(snapshot.services), endpoint_count,
                              error=self.last_error)
        return SyncResult(True, full, len(snapshot.services), endpoint_count)

    def _select(self, family: IPFamily, snapshot: Snapshot,
                only: Collection[ServicePortName] | None,
                touched: dict[ListenerKey, _Wanted], dropped: set[ListenerKey]) -> None:
        """Bring ``family``'s port plans up to date with ``snapshot``: every port (``only``
        None), or the ports in ``only``. A port whose service and endpoints are the objects
        (or equal to those) of its plan keeps it, and with it its planned rules. The
        listeners of (re)planned ports go to ``touched``, those no longer wanted by a port
        to ``dropped``."""
        node = snapshot.node
        zone = (node.zone or "") if node is not None else ""
        plans = self._plans.setdefault(family, _FamilyPlans())
        if zone != plans.zone:
            # Topology hints are read against the node's zone: no selection still holds.
            plans.zone = zone
            for cached_plan in plans.ports.values():
                cached_plan.port = None
            only = None
        names: Iterable[ServicePortName] = snapshot.services if only is None else only
        membership_changed = False
        if only is None:
            for name in [name for name in plans.ports if name not in snapshot.services]:
                plans.skipped.pop(name, None)
                self._forget_plan(plans.ports.pop(name), dropped)
                membership_changed = True
        for name in names:
            port = snapshot.services.get(name)
            cached = plans.ports.get(name)
            if port is None:
                plans.skipped.pop(name, None)
                if cached is not None:
                    self._forget_plan(plans.ports.pop(name), dropped)
                    membership_changed = True
                continue
            endpoints = snapshot.endpoints_of(name)
            if cached is not None and (cached.port is port or cached.port == port) and (
                    cached.endpoints is endpoints or cached.endpoints == endpoints):
                touched.update(cached.wanted)
                continue
            if cached is None:
                membership_changed = True
            else:
                self._forget_plan(cached, dropped)
            selection, skipped = self._select_port(family, port, endpoints, zone)
            if skipped is None:
                plans.skipped.pop(name, None)
            else:
                plans.skipped[name] = skipped
            plan = plans.ports[name] = _PortPlan(port, endpoints, selection, _wanted(selection))
            self._wanted.update(plan.wanted)
            touched.update(plan.wanted)
        if membership_changed or len(plans.order) != len(plans.ports):
            plans.order = sorted(plans.ports)

    def _forget_plan(self, plan: _PortPlan, dropped: set[ListenerKey]) -> None:
        for key, _ in plan.wanted:
            self._wanted.pop(key, None)
            dropped.add(key)

    def _select_port(self, family: IPFamily, port: ServicePort, endpoints: tuple[Endpoint, ...],
                     zone: str) -> tuple[PortSelection | None, SkipReason | None]:
        """The port's selection in ``family`` (None: not relayed), or why it is skipped."""
        problem = port_problem(port)
        if problem is not None:
            return None, SkipReason(SkipKind.UNRENDERABLE, problem)
        if port.protocol not in RELAYED_PROTOCOLS:
            return None, SkipReason(SkipKind.UNSUPPORTED,
                                    f"{port.protocol.value} is not supported in userspace mode")
        view = family_view(port, family)
        if view is None:
            return None, None
        members = family_endpoints(endpoints, family)
        problem = endpoints_problem(members)
        if problem is not None:
            return None, SkipReason(SkipKind.UNRENDERABLE, problem)
        return select_port(view, members, node_name=self._config.hostname, zone=zone), None

    def _report_skipped(self) -> None:
        skipped: dict[ServicePortName, SkipReason] = {}
        for plans in self._plans.values():
            skipped.update(plans.skipped)
        self.skipped.update(skipped)

    async def _open_and_update(self, wanted: Mapping[ListenerKey, _Wanted]) -> list[str]:
        errors: list[str] = []
        for key, (targets, affinity_timeout, frontend_ports) in wanted.items():
            entry = self._listeners.get(key)
            if entry is None:
                try:
                    listener = await self._open_listener(key)
                except OSError as error:
                    log.error("%s: cannot open a listener: %s", key, error)
                    errors.append(f"{key}: {error}")
                    continue
                entry = self._listeners[key] = _Open(listener)
                log.info("%s: listening on port %d", key, listener.port)
            if entry.targets != targets or entry.affinity_timeout != affinity_timeout:
                entry.listener.update(targets, affinity_timeout)
                entry.targets, entry.affinity_timeout = targets, affinity_timeout
            entry.frontend_ports = frontend_ports
        return errors

    async def _write(self, family: IPFamily, snapshot: Snapshot, full: bool) -> None:
        context = plan_context(self._config, snapshot.node, family)
        plans = self._plans[family]
        if plans.context != context:
            plans.context = context
            for cached in plans.ports.values():
                cached.rules = None
        listeners = self._listeners
        port_rules: list[PortRules] = []
        for name in plans.order:
            cached = plans.ports[name]
            selection = cached.selection
            if selection is None:
                continue
            ports = {key: listeners[key].listener.port for key, _ in cached.wanted
                     if key in listeners}
            listener_ports = tuple(ports.values())
            if cached.rules is None or cached.listener_ports != listener_ports:
                cached.rules = plan_port(selection, ports, context)
                cached.listener_ports = listener_ports
            port_rules.append(cached.rules)
        ruleset = assemble_portals(port_rules, context)
        payloads = render_full(ruleset)
        text = "".join(payloads.values())
        if not full and self._written.get(family) == text:
            return
        await asyncio.to_thread(self._backend.restore_all, family, payloads)
        self._written[family] = text
        if full:
            await asyncio.to_thread(self._backend.ensure_jumps, family, ruleset.jumps)

    async def _after_sync(self, snapshot: Snapshot) -> None:
        if self._remove_other_mode is not None:
            remove, self._remove_other_mode = self._remove_other_mode, None
            report = await asyncio.to_thread(remove)
            if not report.ok:
                log.warning("removing iptables mode's rules: %s", "; ".join(report.errors))
        if self._health is not None:
            ports = health_check_ports(snapshot)
            await self._health.sync_services(ports)
            self._health.update_endpoints(
                local_ready_endpoint_counts(snapshot, self._config.hostname, only=ports))

    async def close(self) -> None:
        """Stop accepting, drain for the drain grace, then remove the portal rules."""
        if self._closed:
            return
        self._closed = True
        listeners = [entry.listener for entry in self._listeners.values()]
        self._listeners.clear()
        await asyncio.gather(*(listener.close(self._limits.drain_grace)
                               for listener in listeners))
        if self._written or self._last_full is not None:
            report = await asyncio.to_thread(
                cleanup, self._backend, self._families, userspace_mode_chain)
            if not report.ok:
                log.warning("removing the portal rules: %s", "; ".join(report.errors))
        if self._health is not None:
            await self._health.close()


@dataclass
class _PortPlan:
    """One port's last selection and rules, with the inputs they were made from."""

    port: ServicePort | None  # None: to be planned again
    endpoints: tuple[Endpoint, ...]
    selection: PortSelection | None  # None: not relayed in this family
    wanted: tuple[tuple[ListenerKey, _Wanted], ...]  # its listeners and what they get
    listener_ports: tuple[int, ...] = ()
    rules: PortRules | None = None


@dataclass
class _FamilyPlans:
    order: list[ServicePortName] = field(default_factory=list)  # the ports' names, sorted
    zone: str | None = None  # the node's zone the selections were made for
    skipped: dict[ServicePortName, SkipReason] = field(default_factory=dict)  # and why
    ports: dict[ServicePortName, _PortPlan] = field(default_factory=dict)
    context: PlanContext | None = None


class _Wanted(NamedTuple):
    targets: tuple[Target, ...]
    affinity_timeout: float | None
    frontend_ports: tuple[int, ...]


def _wanted(selection: PortSelection | None) -> tuple[tuple[ListenerKey, _Wanted], ...]:
    if selection is None:
        return ()
    port = selection.view.port
    frontend_ports = (port.port,) if port.node_port is None else (port.port, port.node_port)
    return tuple(
        (selection.key(scope),
         _Wanted(selection.targets(scope), selection.affinity_timeout, frontend_ports))
        for scope in selection.scopes())


class DataPlaneListeners:
    """Opens the data plane's TCP and UDP listeners, all sharing one budget and stats."""

    def __init__(self, *, clock: Clock, limits: RelayLimits, budget: ConnectionBudget,
                 stats: UserspaceStats, port_range: PortRange | None = None) -> None:
        self._clock = clock
        self._limits = limits
        self._budget = budget
        self._stats = stats
        self._port_range = port_range

    async def __call__(self, key: ListenerKey) -> Listener:
        from kproxy.userspace.balancer import Balancer
        from kproxy.userspace.listener import open_tcp_listener, open_udp_listener

        opener = open_udp_listener if key.name.protocol is Protocol.UDP else open_tcp_listener

        async def open_on(port: int) -> Listener:
            balancer = Balancer(self._clock, failure_threshold=self._limits.failure_threshold,
                                failure_cooldown=self._limits.failure_cooldown)
            return await opener(str(key), balancer=balancer, limits=self._limits,
                                budget=self._budget, stats=self._stats, clock=self._clock,
                                family=key.family, port=port)

        if self._port_range is None:
            return await open_on(0)
        return await self._port_range.bind(open_on)
