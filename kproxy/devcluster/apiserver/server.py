"""The dev API server: a store served over HTTP, with the controls tests need.

    server = DevApiServer(bookmark_interval=0.2)
    await server.start()            # 127.0.0.1, a free port
    server.write_kubeconfig(path)   # for kubectl and the client library
    ...
    server.compact()                # older watch versions now get 410 Gone
    server.close_watches()          # every open watch connection drops
    await server.stop()

A new server started on the same port with the same store is a restart: objects and the
resourceVersion counter are kept, the history is not (as after an apiserver restart, watches
from old versions get 410 Gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from kproxy.clock import Clock, SystemClock
from kproxy.devcluster.apiserver import persistence
from kproxy.devcluster.apiserver.access import AccessControl
from kproxy.devcluster.apiserver.http import ApiHandlers
from kproxy.devcluster.apiserver.kubeconfig import write_kubeconfig
from kproxy.devcluster.apiserver.manifests import flatten
from kproxy.devcluster.apiserver.objects import StoredObject
from kproxy.devcluster.apiserver.store import DEFAULT_HISTORY_SIZE, DEFAULT_SERVICE_CIDRS, Store
from kproxy.devcluster.apiserver.watchers import CloseReason

log = logging.getLogger(__name__)

DEFAULT_WATCH_QUEUE_SIZE = 10_000
DEFAULT_STATE_SAVE_INTERVAL = 2.0
# How long stop() lets watch handlers finish their streams before closing connections.
_STOP_GRACE_SECONDS = 2.0


class DevApiServer:
    def __init__(
        self,
        store: Store | None = None,
        *,
        bookmark_interval: float = 60.0,
        history_size: int | None = None,
        watch_queue_size: int = DEFAULT_WATCH_QUEUE_SIZE,
        service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
        state_file: str | os.PathLike[str] | None = None,
        state_save_interval: float = DEFAULT_STATE_SAVE_INTERVAL,
        clock: Clock | None = None,
        access: AccessControl | None = None,
        validate: bool = True,
    ) -> None:
        """``validate=False``: store what validation refuses as it was sent (see
        :meth:`Store._store_unvalidated`). ``access``: enforce authentication and RBAC (see
        :mod:`kproxy.devcluster.apiserver.access`); None serves everyone.
        ``history_size`` sizes a new store's history (default
        ``DEFAULT_HISTORY_SIZE``), or resizes a given store's; ``service_cidrs`` only
        applies to a new store."""
        if bookmark_interval <= 0:
            raise ValueError("bookmark_interval must be positive")
        self._clock = clock or SystemClock()
        if store is None:
            store = Store(
                service_cidrs=service_cidrs,
                history_size=history_size or DEFAULT_HISTORY_SIZE,
                clock=self._clock,
                validate=validate,
            )
        elif history_size is not None:
            store.resize_history(history_size)
        self._store = store
        self._handlers = ApiHandlers(
            store,
            clock=self._clock,
            bookmark_interval=bookmark_interval,
            watch_queue_size=watch_queue_size,
            access=access,
        )
        self.access = access
        self._state_file = Path(state_file) if state_file is not None else None
        self._state_save_interval = state_save_interval
        self._saved_version: int | None = None
        self._saver: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, unix_path: str | None = None
    ) -> None:
        """Serve on HOST:PORT and, with ``unix_path``, also on that Unix socket: a process in
        another network namespace (a test driver, the demo) reaches the server through the
        file system without any network path between the namespaces."""
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        # A (re)started server never has history: watches from older versions get 410.
        if self._state_file is not None and persistence.load(self._store, self._state_file):
            log.info(
                "loaded %s (resourceVersion %d)", self._state_file, self._store.resource_version
            )
            self._saved_version = self._store.resource_version
        self._store.compact()
        runner = web.AppRunner(
            self._handlers.application(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_STOP_GRACE_SECONDS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            if unix_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(unix_path)
                await web.UnixSite(runner, unix_path).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        tcp_addresses = [a for a in (runner.addresses or []) if isinstance(a, tuple)]
        bound = tcp_addresses[0] if tcp_addresses else (host, port)
        self._host, self._port = str(bound[0]), int(bound[1])
        if self._state_file is not None:
            self._saver = asyncio.create_task(self._save_periodically())
        log.info("dev API server listening on %s", self.url)

    async def stop(self) -> None:
        """Close every watch (cleanly: streams end), stop serving, save the state file."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        self._handlers.close_watches(CloseReason.SHUTDOWN)
        await self._handlers.wait_for_watches_to_end(_STOP_GRACE_SECONDS)
        await runner.cleanup()
        self._save_now()

    async def __aenter__(self) -> DevApiServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._runner is None and not self._port:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def store(self) -> Store:
        return self._store

    # --- content and test controls ---------------------------------------------------------

    def load_objects(self, objects: Iterable[Mapping[str, Any]]) -> list[StoredObject]:
        """Create (or replace) objects given as API dicts; ``List`` objects are unpacked and
        Namespaces go first, so a manifest may create the namespaces it uses."""
        bodies = [dict(obj) for obj in flatten(objects)]
        bodies.sort(key=lambda body: body.get("kind") != "Namespace")
        return [self._store.put(body) for body in bodies]

    def write_kubeconfig(
        self, path: str | os.PathLike[str], *, user: str | None = None,
        token_file: str | None = None,
    ) -> Path:
        """A kubeconfig for this server; with access enforced, carrying ``user``'s token
        (by default the first user's), or naming ``token_file`` where a rotated token is."""
        if token_file is not None:
            return write_kubeconfig(path, self.url, token_file=token_file)
        token = None
        if self.access is not None:
            tokens = self.access.tokens
            token = self.access.token_of(user) if user else next(iter(tokens), None)
            if user and token is None:
                raise ValueError(f"no token for user {user!r}")
        return write_kubeconfig(path, self.url, token)

    def compact(self) -> None:
        """Drop the change history: any watch or continue token from an older resourceVersion
        gets 410 Gone."""
        self._store.compact()

    def expire_watches(self) -> int:
        """Force every watcher to relist: expire all versions handed out so far, then end the
        watch streams cleanly, so each client's next watch gets 410 Gone. Returns how many
        watches were open."""
        self._store.expire_history()
        return self._handlers.close_watches(CloseReason.SHUTDOWN)

    def close_watches(self) -> int:
        """Cut every open watch connection, as a network failure would; returns how many."""
        return self._handlers.close_watches(CloseReason.DROPPED)

    @property
    def open_watch_count(self) -> int:
        return len(self._handlers.open_watches)

    # --- state file ------------------------------------------------------------------------

    def _save_now(self) -> None:
        if self._state_file is None or self._saved_version == self._store.resource_version:
            return
        self._saved_version = persistence.save(self._store, self._state_file)
        log.info("saved %s (resourceVersion %d)", self._state_file, self._saved_version)

    async def _save_periodically(self) -> None:
        assert self._state_file is not None
        while True:
            await asyncio.sleep(self._state_save_interval)
            if self._saved_version == self._store.resource_version:
                continue
            try:
                version, data = persistence.snapshot(self._store)
                await asyncio.to_thread(persistence.write_atomically, self._state_file, data)
                self._saved_version = version
            except OSError as error:
                log.warning("could not save %s: %s", self._state_file, error)
