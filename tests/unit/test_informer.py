"""Informers against the dev API server, through the real client transport.

Every test drives objects through the API over HTTP and checks what the informer handed to its
handler: adds, updates, deletes, relists after 410 Gone and after server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kproxy.backoff import ExponentialBackoff
from kproxy.clock import SystemClock
from kproxy.devcluster.apiserver.resources import SERVICES as SERVICES_RESOURCE
from kproxy.devcluster.apiserver.server import DevApiServer
from kproxy.kube.informer import Informer, ResourceSpec
from kproxy.kube.transport import KubeTransport

SERVICES = ResourceSpec("Service", "/api/v1/services")


class RecordingHandler:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str]] = []
        self.lists = 0

    def on_upsert(self, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        self.objects[(metadata["namespace"], metadata["name"])] = obj

    def on_delete(self, namespace: str, name: str) -> None:
        self.objects.pop((namespace, name), None)
        self.deleted.append((namespace, name))

    def on_listed(self) -> None:
        self.lists += 1

    def port_of(self, name: str) -> int | None:
        obj = self.objects.get(("default", name))
        return None if obj is None else int(obj["spec"]["ports"][0]["port"])


def service(name: str, port: int = 80, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    }


class Api:
    """A tiny HTTP client for driving the server the way kubectl would."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(
            f"{self.url}/api/v1/namespaces/default/services", json=body
        ) as response:
            assert response.status == 201, await response.text()
            created: dict[str, Any] = await response.json()
            return created

    async def patch(self, name: str, patch: dict[str, Any]) -> None:
        async with self.session.patch(
            f"{self.url}/api/v1/namespaces/default/services/{name}",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            assert response.status == 200, await response.text()

    async def delete(self, name: str) -> None:
        async with self.session.delete(
            f"{self.url}/api/v1/namespaces/default/services/{name}"
        ) as response:
            assert response.status == 200, await response.text()


async def eventually(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait for a condition (not a timing assertion: the timeout only bounds a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DevApiServer]:
    api_server = DevApiServer(bookmark_interval=0.2)
    await api_server.start("127.0.0.1", 0)
    yield api_server
    await api_server.stop()


@pytest.fixture
async def transport(server: DevApiServer, tmp_path: Path) -> AsyncIterator[KubeTransport]:
    kubeconfig = tmp_path / "kubeconfig"
    server.write_kubeconfig(kubeconfig)
    kube = await KubeTransport.connect(str(kubeconfig))
    yield kube
    await kube.close()


@pytest.fixture
async def api(server: DevApiServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(server.url, session)


def make_informer(
    transport: KubeTransport,
    handler: RecordingHandler,
    spec: ResourceSpec = SERVICES,
    page_size: int = 500,
) -> Informer:
    clock = SystemClock()
    backoff = ExponentialBackoff(clock, initial=0.02, maximum=0.1, jitter=0.1)
    return Informer(transport, spec, handler, clock=clock, backoff=backoff, page_size=page_size)


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[Informer]:
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.listed.wait(), 10)
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_list_then_watch_adds_updates_and_deletes(
    transport: KubeTransport, api: Api
) -> None:
    await api.create(service("before", 80))
    handler = RecordingHandler()
    async with running(make_informer(transport, handler)):
        assert handler.port_of("before") == 80 and handler.lists == 1
        await api.create(service("after", 81))
        await eventually(lambda: handler.port_of("after") == 81, "watch ADDED")
        await api.patch("after", {"spec": {"ports": [{"name": "http", "port": 82}]}})
        await eventually(lambda: handler.port_of("after") == 82, "watch MODIFIED")
        await api.delete("before")
        await eventually(lambda: ("default", "before") in handler.deleted, "watch DELETED")
        assert set(handler.objects) == {("default", "after")}


async def test_paged_list_returns_every_object(transport: KubeTransport, api: Api) -> None:
    for index in range(7):
        await api.create(service(f"svc-{index}", 80 + index))
    handler = RecordingHandler()
    informer = make_informer(transport, handler, page_size=2)
    async with running(informer):
        assert {name for _, name in handler.objects} == {f"svc-{i}" for i in range(7)}
        assert informer.resource_version != ""


async def test_dropped_watch_relists_and_emits_changes_missed_meanwhile(
    server: DevApiServer, transport: KubeTransport, api: Api
) -> None:
    await api.create(service("keep", 80))
    await api.create(service("gone", 80))
    handler = RecordingHandler()
    informer = make_informer(transport, handler)
    async with running(informer):
        await eventually(lambda: server.open_watch_count >= 1, "watch open")
        # In one step, with no chance for the informer to run in between: drop its watch
        # connection, change objects behind its back, and forget the history, so that only
        # a relist can show the changes.
        server.close_watches()
        server.store.delete(SERVICES_RESOURCE, "default", "gone")
        server.store.create(SERVICES_RESOURCE, service("born-during-outage", 70))
        server.compact()
        await eventually(lambda: informer.stats.errors >= 1, "the dropped connection")
        await eventually(lambda: handler.lists >= 2, "a relist")
        await eventually(lambda: ("default", "gone") in handler.deleted, "missed delete")
        await eventually(lambda: handler.port_of("born-during-outage") == 70, "missed create")
        assert handler.port_of("keep") == 80
        # ... and the watch resumes after the relist.
        await api.create(service("new", 80))
        await eventually(lambda: handler.port_of("new") == 80, "watch after relist")


async def test_watch_from_compacted_version_gets_410_and_relists(tmp_path: Path) -> None:
    # No bookmarks here: they would move the informer's version forward on their own.
    server = DevApiServer(bookmark_interval=3600)
    await server.start("127.0.0.1", 0)
    server.write_kubeconfig(tmp_path / "kubeconfig")
    transport = await KubeTransport.connect(str(tmp_path / "kubeconfig"))
    try:
        handler = RecordingHandler()
        informer = make_informer(transport, handler)
        informer._watch_timeout_range = (1, 1)  # the server ends each watch cleanly after 1 s
        server.store.create(SERVICES_RESOURCE, service("a", 80))
        async with running(informer):
            assert handler.port_of("a") == 80
            # As if the informer had been away for ages: its version is older than the
            # server's history, so its next watch (after the clean 1 s timeout) gets 410.
            server.compact()
            informer.resource_version = "1"
            await eventually(lambda: informer.stats.expired >= 1, "410 Gone")
            await eventually(lambda: handler.lists >= 2, "relist after 410")
            server.store.create(SERVICES_RESOURCE, service("b", 80))
            await eventually(lambda: handler.port_of("b") == 80, "watch after relist")
            assert informer.stats.errors == 0
    finally:
        await transport.close()
        await server.stop()


async def test_server_restart_with_same_store_is_followed(
    server: DevApiServer, transport: KubeTransport, api: Api
) -> None:
    await api.create(service("a", 80))
    handler = RecordingHandler()
    informer = make_informer(transport, handler)
    async with running(informer):
        port = server.port
        await server.stop()
        restarted = DevApiServer(server.store, bookmark_interval=0.2)
        await restarted.start("127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as session:
                api2 = Api(restarted.url, session)
                await api2.delete("a")
                await api2.create(service("b", 81))
                await eventually(lambda: handler.port_of("b") == 81, "object after restart")
                await eventually(lambda: ("default", "a") in handler.deleted, "delete")
        finally:
            await restarted.stop()


async def test_bookmarks_advance_the_resource_version(
    server: DevApiServer, transport: KubeTransport, api: Api
) -> None:
    handler = RecordingHandler()
    informer = make_informer(transport, handler)
    async with running(informer):
        await eventually(lambda: informer.stats.bookmarks >= 1, "a bookmark")


async def test_label_selector_transitions_are_adds_and_deletes(
    transport: KubeTransport, api: Api
) -> None:
    handler = RecordingHandler()
    spec = ResourceSpec("Service", "/api/v1/services",
                        label_selector="!service.kubernetes.io/headless")
    async with running(make_informer(transport, handler, spec)):
        await api.create(service("web", 80))
        await eventually(lambda: handler.port_of("web") == 80, "selected service")
        await api.patch("web", {"metadata": {"labels": {"service.kubernetes.io/headless": ""}}})
        await eventually(lambda: ("default", "web") in handler.deleted, "deselected -> DELETED")
        await api.patch("web", {"metadata": {"labels": {"service.kubernetes.io/headless": None}}})
        await eventually(lambda: handler.port_of("web") == 80, "reselected -> ADDED")
