"""``kproxy run``: wire a source, the state tracker, the sync runner and a proxier together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

from kproxy.clock import Clock, SystemClock
from kproxy.config import ProxyConfig, ProxyMode
from kproxy.conntrack import ConntrackCleaner
from kproxy.filesource import feed_objects
from kproxy.gctuning import configure_gc, freeze_long_lived, one_shot_collector
from kproxy.healthcheck import ServiceHealthServer
from kproxy.healthz import HealthServer, ProxierHealth
from kproxy.httpserve import ListeningApp
from kproxy.iptables.backend import Backend, BackendError, open_backend
from kproxy.metrics import MetricsServer, ProxyMetrics
from kproxy.objectfile import ClusterObjects, ObjectFileError, load_object_file
from kproxy.proxier import Proxier, SnapshotLogger
from kproxy.rejections import RejectionLog
from kproxy.runner import SyncRunner
from kproxy.state import StateTracker

log = logging.getLogger(__name__)

# kube-proxy retries a health or metrics server that cannot bind this often.
SERVER_RETRY_SECONDS = 5.0


def make_proxier(
    config: ProxyConfig,
    clock: Clock,
    request_sync: Callable[[], None],
    proxy_healthy: Callable[[], bool] = lambda: True,
) -> Proxier:
    """The forwarding mode's proxier; raises BackendError where it cannot run here.

    ``proxy_healthy`` is the proxy's own health, which the health check node ports of
    externalTrafficPolicy Local services report (``serviceProxyHealthy``), as kube-proxy's do.

    Either mode removes the other mode's rules around its first sync (kproxy.modeswitch).
    """
    backend = open_backend(config.iptables_backend)
    if not backend.families():
        # Otherwise every sync writes nothing, reports success, and --once exits 0.
        raise BackendError(
            f"the {backend.name} iptables backend can use no IP family here "
            "(listing the nat table failed for IPv4 and IPv6)"
        )
    # A one-shot run programs rules and leaves: no servers, no background cleanup.
    long_running = not config.once
    health = ServiceHealthServer(proxy_healthy=proxy_healthy) if long_running else None
    if config.proxy_mode is ProxyMode.USERSPACE:
        return _userspace_proxier(config, clock, backend, health)
    from kproxy.modeswitch import IptablesProxierAfterUserspace

    return IptablesProxierAfterUserspace(
        config,
        backend,
        clock=clock,
        conntrack=ConntrackCleaner(families=backend.families(),
                                   clear_services_without_endpoints=True)
        if long_running else None,
        health=health,
        request_sync=request_sync,
    )


def _userspace_proxier(
    config: ProxyConfig, clock: Clock, backend: Backend, health: ServiceHealthServer | None
) -> Proxier:
    from kproxy.modeswitch import remove_iptables_mode
    from kproxy.userspace.limits import RelayLimits, raise_nofile_limit
    from kproxy.userspace.proxier import UserspaceProxier
    from kproxy.userspace.udpflows import UdpFlowForgetter

    long_running = health is not None
    if not long_running:
        log.warning("--once in userspace mode: the relays stop, and the portal rules are "
                    "removed, when kproxy exits")
    # Every relayed connection holds several descriptors: take what the system allows.
    raise_nofile_limit()
    families = backend.families()
    limits = RelayLimits(
        idle_timeout=config.userspace_idle_timeout,
        udp_idle_timeout=config.userspace_udp_idle_timeout,
        endpoint_grace=config.userspace_endpoint_grace,
        drain_grace=config.userspace_drain_grace,
        max_connections_global=config.userspace_max_connections,
        max_connections_per_service=min(config.userspace_max_connections,
                                        RelayLimits.max_connections_per_service),
    )
    return UserspaceProxier(
        config,
        backend,
        clock=clock,
        limits=limits,
        families=families,
        health=health,
        remove_other_mode=lambda: remove_iptables_mode(backend, families),
        forget_udp_flows=UdpFlowForgetter() if long_running else None,
    )


class ProxyService:
    """One node's proxy: tracker + runner + proxier, fed by whatever source is attached."""

    def __init__(self, config: ProxyConfig, proxier: Proxier, clock: Clock) -> None:
        self.config = config
        self.proxier = proxier
        self.clock = clock
        self.rejections = RejectionLog()
        self.runner = SyncRunner(
            self._sync,
            clock=clock,
            min_interval=config.min_sync_period,
            max_interval=config.sync_period,
        )
        self.tracker = StateTracker(on_change=self._on_change)
        # kube-proxy: unhealthy once a queued change waits 2 x the sync period.
        self.health = ProxierHealth(clock, timeout=2 * config.sync_period)
        self.metrics = ProxyMetrics(
            mode=config.proxy_mode.value,
            node_name=config.hostname,
            tracker=self.tracker,
            rejections=self.rejections,
            health=self.health,
            proxier=lambda: self.proxier,
        )
        self._frozen_after_first_sync = False
        self.ready = asyncio.Event()
        self.last_sync_ok: bool | None = None

    def _on_change(self) -> None:
        self.health.sync_node(self.tracker.node)
        # Before both first lists are in, changes only accumulate: the first sync must see
        # the complete state, and must not be held back by a premature one's min interval.
        if self.tracker.ready:
            self.ready.set()
            self.health.queued_update()
            self.runner.request()

    async def _sync(self) -> bool:
        if not self.tracker.ready:
            # A partial view would delete live services: wait for both first lists.
            return True
        snapshot = self.tracker.snapshot()
        started = time.perf_counter()
        result = await self.proxier.sync(snapshot)
        self.metrics.observe_sync(snapshot, result, time.perf_counter() - started)
        self.last_sync_ok = result.ok
        if result.ok:
            self.health.updated()
            self.tracker.sync_succeeded(snapshot)
            if not self._frozen_after_first_sync and not self.config.once:
                self._frozen_after_first_sync = True
                freeze_long_lived()
        else:
            log.error("sync failed: %s", result.error)
        return result.ok


async def run_proxy(config: ProxyConfig) -> int:
    configure_gc()
    with one_shot_collector() if config.once else contextlib.nullcontext():
        return await _run_proxy(config)


async def _run_proxy(config: ProxyConfig) -> int:
    clock = SystemClock()
    service = ProxyService(config, SnapshotLogger(), clock)
    if config.from_file:
        # A bad file fails before anything touches the kernel.
        try:
            _feed_file(service, load_object_file(config.from_file))
        except ObjectFileError as error:
            log.error("%s", error)
            return 1
    try:
        service.proxier = make_proxier(config, clock, service.runner.request,
                                        proxy_healthy=service.health.is_healthy)
    except (BackendError, ValueError) as error:
        log.error("cannot start %s mode: %s", config.proxy_mode.value, error)
        return 1
    # A one-shot run programs rules and leaves: no servers.
    servers = () if config.once else _servers(service)
    if config.bind_address_hard_fail and not await _start_or_fail(servers):
        await service.proxier.close()
        return 1
    serving = [asyncio.create_task(_serve(server)) for server in servers]
    try:
        if config.from_file:
            return await _run_from_file(service)
        return await _run_from_api(service)
    finally:
        # The source and the runner have stopped: the mode releases what it holds
        # (iptables: nothing, its rules stay; userspace: drains), then the servers go.
        await service.proxier.close()
        for task in serving:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in servers:
            await server.close()


def _servers(service: ProxyService) -> Sequence[ListeningApp]:
    config = service.config
    servers: list[ListeningApp] = []
    if config.healthz_bind_address:
        servers.append(HealthServer(service.health, config.healthz_bind_address))
    if config.metrics_bind_address:
        servers.append(MetricsServer(service.metrics, config.metrics_bind_address, config))
    return servers


async def _start_or_fail(servers: Sequence[ListeningApp]) -> bool:
    """--bind-address-hard-fail: start every server now; False (logged, the ones started
    closed again) when an address cannot be bound, as kube-proxy then exits."""
    for server in servers:
        try:
            await server.start()
        except OSError as error:
            log.error("cannot serve %s on %s, exiting (--bind-address-hard-fail): %s",
                      type(server).__name__, server.address, error)
            for started in servers:
                await started.close()
            return False
    return True


async def _serve(server: ListeningApp) -> None:
    """Start ``server``; while its address cannot be bound, log it once and retry."""
    reported = False
    while not server.running:
        try:
            await server.start()
        except OSError as error:
            if not reported:
                log.error("cannot serve on %s (retrying every %.0fs): %s",
                          server.address, SERVER_RETRY_SECONDS, error)
                reported = True
            await asyncio.sleep(SERVER_RETRY_SECONDS)
            continue
        log.log(logging.INFO - 1, "serving %s on %s", type(server).__name__, server.address)
        return


def _feed_file(service: ProxyService, objects: ClusterObjects) -> None:
    """The file's objects into the tracker; the raw documents (several times the file's size
    in memory) are not kept past this."""
    config = service.config
    feed_objects(
        objects,
        service.tracker,
        service.rejections,
        node_name=config.hostname,
        proxy_name=config.service_proxy_name,
    )


async def _run_from_file(service: ProxyService) -> int:
    config = service.config
    ok = await service._sync()
    if config.once:
        return 0 if ok else 1
    # Without --once the file is a static source: keep the rules and resync periodically.
    await _until_signalled(service.runner, stop_source=None)
    return 0


async def _run_from_api(service: ProxyService) -> int:
    # Here, not at the top: a run from a file needs no Kubernetes client library.
    from kproxy.kube.transport import KubeTransport
    from kproxy.sources import ApiSource

    config = service.config
    try:
        transport = await KubeTransport.connect(config.kubeconfig, config.master)
    except Exception as error:
        log.error("cannot configure the Kubernetes client: %s", error)
        return 1
    log.info("kproxy watching %s as node %s", transport.host, config.hostname)
    source = ApiSource(
        transport,
        service.tracker,
        service.rejections,
        node_name=config.hostname,
        proxy_name=config.service_proxy_name,
        clock=service.clock,
    )
    source_task = asyncio.create_task(source.run())
    background = [source_task]
    monitor = getattr(service.proxier, "monitor_canary", None)
    if monitor is not None and not config.once:
        background.append(asyncio.create_task(monitor(min(config.sync_period, 60.0))))

    async def stop_source() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        if config.once:
            await service.ready.wait()
            return 0 if await service._sync() else 1
        await _until_signalled(service.runner, stop_source=stop_source)
        return 0
    finally:
        await stop_source()
        await transport.close()


async def _until_signalled(
    runner: SyncRunner, *, stop_source: Callable[[], Awaitable[None]] | None
) -> None:
    """Run syncs until SIGTERM or SIGINT; then stop the source first (no new changes), and
    the runner once its current sync, if any, has finished."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)
    syncing = asyncio.create_task(runner.run_forever())
    waiting = asyncio.create_task(signalled.wait())
    try:
        await asyncio.wait({syncing, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if signalled.is_set():
            log.info("signalled: stopping")
        if stop_source is not None:
            await stop_source()
        runner.stop()
        await syncing
    finally:
        for task in (syncing, waiting):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
