"""The dev API server through the real client library (kubernetes_asyncio), over a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kproxy.devcluster.apiserver import DevApiServer


@pytest.fixture
async def server() -> AsyncIterator[DevApiServer]:
    server = DevApiServer(bookmark_interval=0.05)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def api(server: DevApiServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration=configuration) as api_client:
        yield api_client


def new_service(name: str, **labels: str) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1ServiceSpec(
            selector={"app": name}, ports=[client.V1ServicePort(name="http", port=80)]
        ),
    )


async def test_create_and_list_services_and_slices(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    created = await core.create_namespaced_service("default", new_service("web"))
    assert created.spec.cluster_ip.startswith("10.96.")
    assert created.spec.ports[0].target_port == 80
    slice_body = client.V1EndpointSlice(
        metadata=client.V1ObjectMeta(name="web-1", labels={"kubernetes.io/service-name": "web"}),
        address_type="IPv4",
        endpoints=[
            client.V1Endpoint(
                addresses=["10.244.0.5"], conditions=client.V1EndpointConditions(ready=True)
            )
        ],
        ports=[client.DiscoveryV1EndpointPort(name="http", port=8080)],
    )
    await discovery.create_namespaced_endpoint_slice("default", slice_body)
    services = await core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in services.items] == ["web"]
    slices = await discovery.list_endpoint_slice_for_all_namespaces(
        label_selector="kubernetes.io/service-name=web"
    )
    assert slices.items[0].endpoints[0].addresses == ["10.244.0.5"]
    assert slices.items[0].ports[0].protocol == "TCP"
    assert int(slices.metadata.resource_version) >= int(created.metadata.resource_version)


async def test_errors_surface_as_api_exceptions(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_service("default", new_service("web"))
    with pytest.raises(ApiException) as exists:
        await core.create_namespaced_service("default", new_service("web"))
    assert exists.value.status == 409
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_service("ghost", "default")
    assert missing.value.status == 404


async def test_optimistic_concurrency_with_replace(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    original = await core.create_namespaced_service("default", new_service("web"))
    first = await core.read_namespaced_service("web", "default")
    first.metadata.labels = {"edit": "first"}
    await core.replace_namespaced_service("web", "default", first)
    original.metadata.labels = {"edit": "stale"}
    with pytest.raises(ApiException) as conflict:
        await core.replace_namespaced_service("web", "default", original)
    assert conflict.value.status == 409


async def test_patch_and_delete(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_service("default", new_service("web"))
    patched = await core.patch_namespaced_service(
        "web", "default", {"metadata": {"labels": {"patched": "yes"}}}
    )
    assert patched.metadata.labels == {"patched": "yes"}
    status = await core.patch_namespaced_service_status(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}}}
    )
    assert status.status.load_balancer.ingress[0].ip == "198.51.100.4"
    deleted = await core.delete_namespaced_service("web", "default")
    assert deleted.metadata.name == "web"
    assert (await core.list_namespaced_service("default")).items == []


async def test_watch_stream_from_a_version(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    listed = await core.list_service_for_all_namespaces()
    await core.create_namespaced_service("default", new_service("web"))
    stream = watch.Watch()
    seen: list[tuple[str, str | None]] = []
    async with stream:
        async for event in stream.stream(
            core.list_service_for_all_namespaces,
            resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=5,
        ):
            if event["type"] == "BOOKMARK":
                seen.append(("BOOKMARK", None))
                if any(kind == "DELETED" for kind, _ in seen):
                    break
                continue
            assert isinstance(event["object"], client.V1Service)
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "ADDED":
                await core.delete_namespaced_service("web", "default")
    changes = [entry for entry in seen if entry[0] != "BOOKMARK"]
    assert changes == [("ADDED", "web"), ("DELETED", "web")]
    assert ("BOOKMARK", None) in seen


async def test_watch_from_a_compacted_version_raises_410(
    api: client.ApiClient, server: DevApiServer
) -> None:
    core = client.CoreV1Api(api)
    old = (await core.list_service_for_all_namespaces()).metadata.resource_version
    await core.create_namespaced_service("default", new_service("web"))
    server.compact()
    stream = watch.Watch()
    with pytest.raises(ApiException) as gone:
        async with stream:
            async for _ in stream.stream(
                core.list_service_for_all_namespaces, resource_version=old, timeout_seconds=5
            ):
                pass
    assert gone.value.status == 410


async def test_endpoint_slice_watch_with_label_selector(api: client.ApiClient) -> None:
    discovery = client.DiscoveryV1Api(api)
    listed = await discovery.list_endpoint_slice_for_all_namespaces()
    for name, service_name in (("a-1", "a"), ("b-1", "b")):
        await discovery.create_namespaced_endpoint_slice(
            "default",
            client.V1EndpointSlice(
                metadata=client.V1ObjectMeta(
                    name=name, labels={"kubernetes.io/service-name": service_name}
                ),
                address_type="IPv4",
                endpoints=[],
            ),
        )
    stream = watch.Watch()
    async with stream:
        async for event in stream.stream(
            discovery.list_endpoint_slice_for_all_namespaces,
            label_selector="kubernetes.io/service-name=b",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=5,
        ):
            assert (event["type"], event["object"].metadata.name) == ("ADDED", "b-1")
            break
