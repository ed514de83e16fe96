"""iptables mode: plan each family's rules from a snapshot and apply them atomically.

One sync is, per IP family, one ``iptables-restore --noflush`` transaction (or one libiptc
commit per table): a *full* sync writes every kproxy chain and removes kproxy chains the
kernel has but the plan does not; a *partial* sync rewrites only the chains of the service
ports that changed (and the dispatch buckets they sit in). The first sync after start is full
and replaces whatever a previous kproxy left, atomically, so a restart never flushes working
rules. A sync is full again after any failure, when the node's configuration changed, when
the canary chain has disappeared (someone flushed the tables), and every ``sync_period``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kproxy.clock import Clock
from kproxy.config.record import ProxyConfig
from kproxy.conntrack import CleanupStats, ConntrackCleaner
from kproxy.healthcheck import ServiceHealthServer
from kproxy.healthcheck_status import health_check_ports, local_ready_endpoint_counts
from kproxy.iptables.backend import Backend, BackendError
from kproxy.iptables.context import plan_context
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.restore import render_delta, render_full_replacing
from kproxy.iptables.ruleset import Table
from kproxy.iptables.staticchains import CANARY
from kproxy.model.types import IPFamily
from kproxy.proxier import SyncResult
from kproxy.state import Snapshot

log = logging.getLogger(__name__)

ROUTE_LOCALNET = "net/ipv4/conf/all/route_localnet"
TCP_BE_LIBERAL = "net/netfilter/nf_conntrack_tcp_be_liberal"


class Sysctls:
    """The network sysctls of the namespace this process runs in (``/proc/sys``).

    Injected so that tests driving a proxier in-process (with a fake backend, or a backend
    that runs its commands in another namespace) never read or write their own — the
    host's — settings.
    """

    def __init__(self, root: Path = Path("/proc/sys")) -> None:
        self._root = root

    def read(self, key: str) -> str | None:
        try:
            return (self._root / key).read_text().strip()
        except OSError:
            return None

    def write(self, key: str, value: str) -> None:
        (self._root / key).write_text(value)
KPROXY_TABLES = (Table.NAT, Table.FILTER, Table.MANGLE)


@dataclass
class SyncRecord:
    """What the metrics report about syncs (kube-proxy's sync_proxy_rules_* family)."""

    full_durations: list[float] = field(default_factory=list)
    partial_durations: list[float] = field(default_factory=list)
    last_sync_wall: float | None = None
    restore_failures_full: int = 0
    restore_failures_partial: int = 0
    rules_per_table: dict[tuple[IPFamily, Table], int] = field(default_factory=dict)
    # Network programming latency: seconds from an endpoint change to its rules being in
    # the kernel, from endpoints.kubernetes.io/last-change-trigger-time.
    programming_latencies: list[float] = field(default_factory=list)
    last_error: str = ""

    def observe_duration(self, full: bool, seconds: float) -> None:
        durations = self.full_durations if full else self.partial_durations
        durations.append(seconds)
        del durations[:-1000]  # only recent ones are kept; the metrics take them as they come


@dataclass
class _FamilyState:
    planner: IncrementalPlanner | None = None
    needs_full: bool = True


class IptablesProxier:
    def __init__(
        self,
        config: ProxyConfig,
        backend: Backend,
        *,
        clock: Clock,
        families: tuple[IPFamily, ...] | None = None,
        conntrack: ConntrackCleaner | None = None,
        health: ServiceHealthServer | None = None,
        request_sync: Callable[[], None] | None = None,
        sysctls: Sysctls | None = None,
    ) -> None:
        self._config = config
        self._backend = backend
        self._clock = clock
        self._families = families or backend.families()
        self._conntrack = conntrack
        self._health = health
        self._request_sync = request_sync
        self._state = {family: _FamilyState() for family in self._families}
        self._last_full: float | None = None
        self._conntrack_task: asyncio.Task[CleanupStats] | None = None
        self._random_fully = True
        self._sysctls = sysctls or Sysctls()
        self._tcp_be_liberal = self._sysctls.read(TCP_BE_LIBERAL) == "1"
        self.record = SyncRecord()

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def force_full_sync(self, reason: str) -> None:
        log.info("next sync is full: %s", reason)
        for state in self._state.values():
            state.needs_full = True

    # -- sync -------------------------------------------------------------------------------

    async def sync(self, snapshot: Snapshot) -> SyncResult:
        started = time.perf_counter()
        now = self._clock.monotonic()
        if self._last_full is not None and now - self._last_full >= self._config.sync_period:
            self.force_full_sync("periodic resync")
        full = any(state.needs_full for state in self._state.values())
        try:
            for family in self._families:
                await self._sync_family(family, snapshot)
        except (BackendError, OSError, ValueError) as error:
            message = f"{type(error).__name__}: {error}"
            self.record.last_error = message
            if full:
                self.record.restore_failures_full += 1
            else:
                self.record.restore_failures_partial += 1
            self.force_full_sync("the last sync failed")
            return SyncResult(False, full, len(snapshot.services), 0, error=message)
        if full:
            self._last_full = now
        elapsed = time.perf_counter() - started
        self.record.observe_duration(full, elapsed)
        wall = self._clock.wall()
        self.record.last_sync_wall = wall
        for trigger_time in snapshot.trigger_times.values():
            self.record.programming_latencies.append(max(0.0, wall - trigger_time))
        del self.record.programming_latencies[:-1000]
        await self._after_sync(snapshot)
        endpoint_count = sum(len(e) for e in snapshot.endpoints.values())
        log.log(
            logging.INFO - 2,
            "sync (%s) took %.1f ms: %d service ports, %d endpoints, %d changed",
            "full" if full else "partial", elapsed * 1000, len(snapshot.services),
            endpoint_count, len(snapshot.changed),
        )
        return SyncResult(True, full, len(snapshot.services), endpoint_count)

    async def _sync_family(self, family: IPFamily, snapshot: Snapshot) -> None:
        state = self._state[family]
        context = plan_context(
            self._config, snapshot.node, family,
            random_fully=self._random_fully, tcp_be_liberal=self._tcp_be_liberal,
        )
        if state.planner is None or state.planner.context != context:
            state.planner = IncrementalPlanner(context)
            state.needs_full = True
        planner = state.planner
        if state.needs_full:
            ruleset = planner.full(snapshot)
            existing = await asyncio.to_thread(self._existing_chains, family)
            payloads = render_full_replacing(ruleset, existing)
            await asyncio.to_thread(self._backend.restore_all, family, payloads)
            await asyncio.to_thread(self._backend.ensure_jumps, family, planner.jumps)
            for table, rules in ruleset.tables.items():
                self.record.rules_per_table[(family, table)] = sum(
                    len(chain.rules) for chain in rules.chains.values()
                )
            state.needs_full = False
        else:
            delta = planner.partial(snapshot)
            if delta.empty:
                return
            await asyncio.to_thread(self._backend.restore_all, family, render_delta(delta))
        if planner.needs_route_localnet:
            self._ensure_route_localnet()

    def _existing_chains(self, family: IPFamily) -> Mapping[Table, set[str]]:
        return {table: self._backend.list_kproxy_chains(family, table) for table in KPROXY_TABLES}

    def _ensure_route_localnet(self) -> None:
        # Localhost NodePorts need the kernel to route 127.0.0.0/8 to the DNAT target; the
        # martian-source DROP rule in KPROXY-FIREWALL keeps this from being abused.
        if self._sysctls.read(ROUTE_LOCALNET) != "1":
            try:
                self._sysctls.write(ROUTE_LOCALNET, "1")
            except OSError as error:
                log.warning("cannot set net.ipv4.conf.all.route_localnet=1 for localhost "
                            "NodePorts: %s", error)
            else:
                log.info("set net.ipv4.conf.all.route_localnet=1 for localhost NodePorts")

    async def _after_sync(self, snapshot: Snapshot) -> None:
        if self._health is not None:
            ports = health_check_ports(snapshot)
            await self._health.sync_services(ports)
            self._health.update_endpoints(
                local_ready_endpoint_counts(snapshot, self._config.hostname, only=ports)
            )
        if self._conntrack is not None and (
            self._conntrack_task is None or self._conntrack_task.done()
        ):
            # Stale UDP flows are removed after the rules are in place, off the sync path.
            self._conntrack_task = asyncio.create_task(self._conntrack.reconcile(snapshot))

    # -- canary -------------------------------------------------------------------------------

    async def monitor_canary(self, interval: float) -> None:
        """Every ``interval``, check kproxy's canary chain; if someone flushed the tables,
        ask for a full resync."""
        while True:
            await self._clock.sleep(interval)
            if self._last_full is None:
                continue
            for family in self._families:
                exists = await asyncio.to_thread(
                    self._backend.chain_exists, family, Table.MANGLE, CANARY
                )
                if not exists:
                    self.force_full_sync(f"{family.value} canary chain {CANARY} is gone")
                    if self._request_sync is not None:
                        self._request_sync()
                    break

    async def close(self) -> None:
        if self._conntrack_task is not None:
            self._conntrack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._conntrack_task
        if self._health is not None:
            await self._health.close()
