"""iptables mode: plan each family's rules from a snapshot and apply them atomically.

One sync is, per IP family, one ``iptables-restore --noflush`` process (or one libiptc
commit per table): a *full* sync reads the family's tables once, then writes every kproxy
chain, removes kproxy chains the kernel has but the plan does not, and adds the builtin-chain
jumps that are missing, all in that one restore; a *partial* sync rewrites only the chains of
the service ports that changed (and the dispatch buckets they sit in). The first sync after
start is full and replaces whatever a previous kproxy left, atomically, so a restart never
flushes working rules. A sync is full again after any failure, when the node's configuration
changed, when the canary chain has disappeared (someone flushed the tables), and every
``sync_period``. Backends that ask for it (iptables-nft) get big full syncs in several
transactions, ordered so that no packet meets a half-written service
(:mod:`kproxy.iptables.chunks`).

The families are independent, as kube-proxy's per-family proxiers are: a family whose sync
fails is retried (fully) after its own backoff, while the other keeps syncing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kproxy.backoff import ExponentialBackoff
from kproxy.clock import Clock
from kproxy.config.record import ProxyConfig
from kproxy.conntrack import ConntrackCleaner
from kproxy.healthcheck import ServiceHealthServer
from kproxy.healthcheck_status import health_check_ports, local_ready_endpoint_counts
from kproxy.iptables.backend import Backend, BackendError
from kproxy.iptables.chunks import render_full_chunked
from kproxy.iptables.context import plan_context
from kproxy.iptables.kernelstate import missing_jumps
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.restore import TableText, render_delta, render_full_pieces, table_pieces
from kproxy.iptables.ruleset import Table
from kproxy.iptables.staticchains import CANARY
from kproxy.model.types import IPFamily, ServicePortName
from kproxy.proxier import SyncResult
from kproxy.skipped import SkippedPorts, SkipReason
from kproxy.state import Snapshot

log = logging.getLogger(__name__)

ROUTE_LOCALNET = "net/ipv4/conf/all/route_localnet"
TCP_BE_LIBERAL = "net/netfilter/nf_conntrack_tcp_be_liberal"


def count_rules_written(payloads: Mapping[Table, TableText]) -> int:
    """The rules (``-A`` and ``-I`` lines) in restore payloads (a piece starts a line)."""
    return sum(piece.count("\n-A ") + piece.count("\n-I ") + piece.startswith(("-A ", "-I "))
               for text in payloads.values() for piece in table_pieces(text))


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
    # Rules (-A/-I lines) the last sync wrote, all families; builtin-chain jumps it added.
    last_rules_written: int = 0
    last_jumps_added: int = 0
    # The families whose last sync failed, with the error (empty when all are in sync).
    failing_families: dict[IPFamily, str] = field(default_factory=dict)

    def observe_duration(self, full: bool, seconds: float) -> None:
        durations = self.full_durations if full else self.partial_durations
        durations.append(seconds)
        del durations[:-1000]  # only recent ones are kept; the metrics take them as they come


@dataclass
class _FamilyState:
    backoff: ExponentialBackoff
    planner: IncrementalPlanner | None = None
    needs_full: bool = True
    retry_at: float | None = None  # a failing family waits for this (monotonic) time
    failures: int = 0  # in a row
    error: str = ""


@dataclass(frozen=True, slots=True)
class _FamilyOutcome:
    full: bool
    rules_written: int = 0
    jumps_added: int = 0


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
        self._state = {family: _FamilyState(ExponentialBackoff(clock))
                       for family in self._families}
        self._last_full: float | None = None
        self._conntrack_task: asyncio.Task[None] | None = None
        self._conntrack_pending: Snapshot | None = None
        self._random_fully = True
        self._sysctls = sysctls or Sysctls()
        self._tcp_be_liberal = self._sysctls.read(TCP_BE_LIBERAL) == "1"
        self.record = SyncRecord()
        self.skipped = SkippedPorts()

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
        errors: list[str] = []
        outcomes: list[_FamilyOutcome] = []
        for family in self._families:
            state = self._state[family]
            if state.retry_at is not None and now < state.retry_at:
                errors.append(f"{family.value}: waiting to retry after: {state.error}")
                continue
            full = state.needs_full
            try:
                outcomes.append(await self._sync_family(family, snapshot))
            except (BackendError, OSError, ValueError) as error:
                message = f"{type(error).__name__}: {error}"
                errors.append(f"{family.value}: {message}")
                self._family_failed(state, family, full, message)
            else:
                state.retry_at = None
                state.failures = 0
                state.error = ""
                state.backoff.reset()
                self.record.failing_families.pop(family, None)
        self._report_skipped()
        full = any(outcome.full for outcome in outcomes)
        self.record.last_rules_written = sum(outcome.rules_written for outcome in outcomes)
        self.record.last_jumps_added = sum(outcome.jumps_added for outcome in outcomes)
        if full:
            self._last_full = now
        elapsed = time.perf_counter() - started
        if errors:
            return SyncResult(False, full, len(snapshot.services), 0, error="; ".join(errors))
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
            "sync (%s) took %.1f ms: %d service ports, %d endpoints, %d changed, "
            "%d rules written",
            "full" if full else "partial", elapsed * 1000, len(snapshot.services),
            endpoint_count, len(snapshot.changed), self.record.last_rules_written,
        )
        return SyncResult(True, full, len(snapshot.services), endpoint_count)

    def _report_skipped(self) -> None:
        """Every port a family's planner left out, logged once (see :mod:`kproxy.skipped`)."""
        skipped: dict[ServicePortName, SkipReason] = {}
        for state in self._state.values():
            if state.planner is not None:
                skipped.update(state.planner.skipped)
        self.skipped.update(skipped)

    def _family_failed(self, state: _FamilyState, family: IPFamily, full: bool,
                       message: str) -> None:
        self.record.last_error = f"{family.value}: {message}"
        self.record.failing_families[family] = message
        if full:
            self.record.restore_failures_full += 1
        else:
            self.record.restore_failures_partial += 1
        # The first failure is retried by the next sync (the runner's retry, or the next
        # change); from the second in a row on, this family waits for its own backoff, so a
        # family that keeps failing does not cost a full sync every time the other syncs.
        state.failures += 1
        delay = state.backoff.next_delay() if state.failures > 1 else 0.0
        state.retry_at = self._clock.monotonic() + delay if delay else None
        state.error = message
        if not state.needs_full:
            log.info("next %s sync is full: the last one failed", family.value)
        state.needs_full = True
        log.warning("%s sync failed (%d in a row; retry in %.1fs at the earliest): %s",
                    family.value, state.failures, delay, message)

    async def _sync_family(self, family: IPFamily, snapshot: Snapshot) -> _FamilyOutcome:
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
            kernel = await asyncio.to_thread(self._backend.read_tables, family)
            existing = {table: kernel[table].kproxy_chains if table in kernel else frozenset()
                        for table in KPROXY_TABLES}
            jumps = missing_jumps(planner.jumps, kernel)
            chunking = self._backend.chunking
            if chunking is not None and chunking.applies(ruleset, existing):
                written = 0
                for payloads in render_full_chunked(ruleset, existing, jumps,
                                                    chunking.chunk_chains):
                    written += count_rules_written(payloads)
                    await asyncio.to_thread(self._backend.restore_all, family, payloads)
            else:
                pieces = render_full_pieces(ruleset, existing, jumps)
                written = count_rules_written(pieces)
                await asyncio.to_thread(self._backend.restore_all, family, pieces)
                del pieces
            for table, rules in ruleset.tables.items():
                self.record.rules_per_table[(family, table)] = sum(
                    len(chain.rules) for chain in rules.chains.values()
                )
            state.needs_full = False
            outcome = _FamilyOutcome(True, written, len(jumps))
        else:
            delta = planner.partial(snapshot)
            if delta.empty:
                return _FamilyOutcome(False)
            payloads = render_delta(delta)
            await asyncio.to_thread(self._backend.restore_all, family, payloads)
            outcome = _FamilyOutcome(False, count_rules_written(payloads))
        if planner.needs_route_localnet:
            self._ensure_route_localnet()
        return outcome

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
        if self._conntrack is not None:
            # Stale UDP flows are removed after the rules are in place, off the sync path.
            self._conntrack_pending = snapshot
            if self._conntrack_task is None or self._conntrack_task.done():
                self._conntrack_task = asyncio.create_task(
                    self._reconcile_conntrack(self._conntrack))

    async def _reconcile_conntrack(self, cleaner: ConntrackCleaner) -> None:
        # A sync that lands while a reconcile runs is not dropped: its snapshot (the newest
        # one) is reconciled next. Otherwise a UDP endpoint added and the old one removed
        # within one reconcile would leave the old flow until the next periodic sync.
        while self._conntrack_pending is not None:
            snapshot, self._conntrack_pending = self._conntrack_pending, None
            await cleaner.reconcile(snapshot)

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
