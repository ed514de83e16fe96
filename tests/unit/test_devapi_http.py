"""The dev API server over HTTP, with a plain aiohttp client: verbs, errors, lists, watches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kproxy.devcluster.apiserver import DevApiServer

SERVICES_URL = "/api/v1/namespaces/default/services"
SLICES_URL = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
WAIT = 10.0  # upper bound for anything that should happen promptly (never asserted)


@pytest.fixture
async def server() -> AsyncIterator[DevApiServer]:
    server = DevApiServer(bookmark_interval=0.05)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http(server: DevApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


def service(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    **params: str,
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body)
    headers = {"Content-Type": content_type}
    async with http.request(method, url, data=data, headers=headers, params=params) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def create_service(http: aiohttp.ClientSession, name: str, **labels: str) -> dict[str, Any]:
    status, body = await send(http, "POST", SERVICES_URL, service(name, **labels))
    assert status == 201, body
    return body


class EventReader:
    """Reads a watch stream line by line, with a bound on how long to wait."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, Any] | None:
        line = await asyncio.wait_for(self.response.content.readline(), WAIT)
        return json.loads(line) if line else None

    async def next_change(self) -> dict[str, Any]:
        while True:
            event = await self.next()
            assert event is not None, "the watch ended"
            if event["type"] != "BOOKMARK":
                return event


async def open_watch(
    http: aiohttp.ClientSession, url: str, **params: str
) -> tuple[aiohttp.ClientResponse, EventReader]:
    response = await http.get(url, params={"watch": "1", **params})
    assert response.status == 200
    return response, EventReader(response)


# --- discovery ---------------------------------------------------------------------------


async def test_discovery_documents(http: aiohttp.ClientSession) -> None:
    _, version = await send(http, "GET", "/version")
    assert (version["major"], version["minor"]) == ("1", "32")
    _, core = await send(http, "GET", "/api")
    assert core["versions"] == ["v1"]
    _, groups = await send(http, "GET", "/apis")
    assert [g["name"] for g in groups["groups"]] == ["discovery.k8s.io"]
    _, v1 = await send(http, "GET", "/api/v1")
    by_name = {r["name"]: r for r in v1["resources"]}
    assert by_name["services"]["shortNames"] == ["svc"]
    assert by_name["services"]["namespaced"] is True
    assert by_name["nodes"]["namespaced"] is False
    assert by_name["services/status"]["verbs"] == ["get", "patch", "update"]
    assert "deletecollection" not in by_name["services"]["verbs"]
    _, discovery_v1 = await send(http, "GET", "/apis/discovery.k8s.io/v1")
    assert [r["kind"] for r in discovery_v1["resources"]] == ["EndpointSlice"]


async def test_aggregated_discovery_request_gets_the_legacy_format(
    http: aiohttp.ClientSession,
) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    async with http.get("/apis", headers={"Accept": accept}) as response:
        assert response.content_type == "application/json"
        assert (await response.json())["kind"] == "APIGroupList"


async def test_unknown_paths_are_not_found_statuses(http: aiohttp.ClientSession) -> None:
    for path in ("/api/v1/pods", "/apis/apps/v1", "/openapi/v2", "/nothing"):
        status, body = await send(http, "GET", path)
        assert status == 404, path
        assert (body["kind"], body["reason"], body["code"]) == ("Status", "NotFound", 404)


async def test_health(http: aiohttp.ClientSession) -> None:
    async with http.get("/readyz") as response:
        assert response.status == 200
        assert await response.text() == "ok"


# --- verbs and errors --------------------------------------------------------------------


async def test_create_get_list_delete(http: aiohttp.ClientSession) -> None:
    created = await create_service(http, "web")
    assert created["spec"]["clusterIP"].startswith("10.96.")
    status, fetched = await send(http, "GET", f"{SERVICES_URL}/web")
    assert status == 200 and fetched == created
    status, listed = await send(http, "GET", "/api/v1/services")
    assert listed["kind"] == "ServiceList"
    assert [s["metadata"]["name"] for s in listed["items"]] == ["web"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])
    status, deleted = await send(http, "DELETE", f"{SERVICES_URL}/web")
    assert status == 200 and deleted["kind"] == "Service"
    status, missing = await send(http, "GET", f"{SERVICES_URL}/web")
    assert status == 404
    assert missing["message"] == 'services "web" not found'
    assert missing["details"] == {"name": "web", "kind": "services"}


async def test_endpoint_slice_delete_answers_a_success_status(http: aiohttp.ClientSession) -> None:
    body = {
        "metadata": {"name": "web-1"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.1"]}],
        "ports": [{"port": 8080}],
    }
    status, created = await send(http, "POST", SLICES_URL, body)
    assert status == 201
    assert created["ports"] == [{"port": 8080, "name": "", "protocol": "TCP"}]
    status, deleted = await send(http, "DELETE", f"{SLICES_URL}/web-1")
    assert status == 200
    assert deleted["status"] == "Success"
    assert deleted["details"]["group"] == "discovery.k8s.io"


async def test_update_conflicts_on_a_stale_resource_version(http: aiohttp.ClientSession) -> None:
    created = await create_service(http, "web")
    first = json.loads(json.dumps(created))
    first["metadata"]["labels"] = {"edit": "one"}
    status, updated = await send(http, "PUT", f"{SERVICES_URL}/web", first)
    assert status == 200 and updated["metadata"]["labels"] == {"edit": "one"}
    second = json.loads(json.dumps(created))
    second["metadata"]["labels"] = {"edit": "two"}
    status, conflict = await send(http, "PUT", f"{SERVICES_URL}/web", second)
    assert status == 409
    assert conflict["reason"] == "Conflict"
    assert conflict["message"].startswith('Operation cannot be fulfilled on services "web"')


async def test_invalid_object_is_unprocessable(http: aiohttp.ClientSession) -> None:
    bad = service("web")
    bad["spec"]["ports"] = [{"port": 99999}]
    status, body = await send(http, "POST", SERVICES_URL, bad)
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.ports[0].port"


async def test_request_errors(http: aiohttp.ClientSession) -> None:
    status, body = await send(http, "POST", "/api/v1/namespaces/nope/services", service("web"))
    assert (status, body["message"]) == (404, 'namespaces "nope" not found')
    wrong_namespace = service("web")
    wrong_namespace["metadata"]["namespace"] = "kube-system"
    status, body = await send(http, "POST", SERVICES_URL, wrong_namespace)
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = await send(http, "POST", "/api/v1/services", service("web"))
    assert (status, body["reason"]) == (405, "MethodNotAllowed")
    status, body = await send(http, "DELETE", SERVICES_URL)
    assert status == 405
    async with http.post(
        SERVICES_URL, data=b"{not json", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
    status, body = await send(http, "GET", "/api/v1/services", labelSelector="a in (")
    assert status == 400
    status, body = await send(http, "GET", "/api/v1/services", fieldSelector="spec.type=x")
    assert status == 400


async def test_yaml_bodies_are_accepted(http: aiohttp.ClientSession) -> None:
    manifest = b"metadata: {name: from-yaml}\nspec:\n  ports: [{port: 53, protocol: UDP}]\n"
    async with http.post(
        SERVICES_URL, data=manifest, headers={"Content-Type": "application/yaml"}
    ) as response:
        assert response.status == 201
        assert (await response.json())["spec"]["ports"][0]["protocol"] == "UDP"


async def test_patch_types(http: aiohttp.ClientSession) -> None:
    await create_service(http, "web")
    url = f"{SERVICES_URL}/web"
    status, merged = await send(
        http,
        "PATCH",
        url,
        {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 8080}]}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    assert [p["port"] for p in merged["spec"]["ports"]] == [8080]  # lists replaced
    status, strategic = await send(
        http,
        "PATCH",
        url,
        {"spec": {"ports": [{"port": 9090, "name": "metrics"}, {"port": 8080, "name": "http"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200
    assert [(p["port"], p["name"]) for p in strategic["spec"]["ports"]] == [
        (8080, "http"),
        (9090, "metrics"),
    ]
    status, jsonpatched = await send(
        http,
        "PATCH",
        url,
        [{"op": "replace", "path": "/metadata/labels/a", "value": "2"}],
        content_type="application/json-patch+json",
    )
    assert status == 200 and jsonpatched["metadata"]["labels"] == {"a": "2"}
    status, _unsupported = await send(
        http, "PATCH", url, {}, content_type="application/apply-patch+yaml"
    )
    assert status == 415
    status, _stale = await send(
        http,
        "PATCH",
        url,
        {"metadata": {"resourceVersion": "1", "labels": {"b": "x"}}},
        content_type="application/merge-patch+json",
    )
    assert status == 409
    status, _missing = await send(
        http, "PATCH", f"{SERVICES_URL}/ghost", {}, content_type="application/merge-patch+json"
    )
    assert status == 404


async def test_status_subresource_sets_load_balancer_ingress(http: aiohttp.ClientSession) -> None:
    body = service("lb")
    body["spec"]["type"] = "LoadBalancer"
    status, _created = await send(http, "POST", SERVICES_URL, body)
    assert status == 201
    status, patched = await send(
        http,
        "PATCH",
        f"{SERVICES_URL}/lb/status",
        {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    assert patched["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.7"}]
    replaced = json.loads(json.dumps(patched))
    replaced["status"]["loadBalancer"]["ingress"] = [{"ip": "203.0.113.8"}]
    status, put = await send(http, "PUT", f"{SERVICES_URL}/lb/status", replaced)
    assert status == 200
    assert put["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.8"}]
    status, _ = await send(http, "GET", f"{SLICES_URL}/x/status")
    assert status == 404


async def test_delete_collection_of_endpoint_slices(http: aiohttp.ClientSession) -> None:
    for index in range(3):
        body = {
            "metadata": {"name": f"s{index}", "labels": {"keep": str(index == 0).lower()}},
            "addressType": "IPv4",
        }
        assert (await send(http, "POST", SLICES_URL, body))[0] == 201
    status, deleted = await send(http, "DELETE", SLICES_URL, labelSelector="keep=false")
    assert status == 200
    assert [item["metadata"]["name"] for item in deleted["items"]] == ["s1", "s2"]
    _, remaining = await send(http, "GET", SLICES_URL)
    assert [item["metadata"]["name"] for item in remaining["items"]] == ["s0"]


async def test_cluster_scoped_nodes_and_namespaces(http: aiohttp.ClientSession) -> None:
    node = {
        "metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/worker": ""}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]},
    }
    status, created = await send(http, "POST", "/api/v1/nodes", node)
    assert status == 201
    assert created["status"]["addresses"][0]["address"] == "192.168.1.10"
    status, _ = await send(http, "GET", "/api/v1/nodes/node-1")
    assert status == 200
    status, _ = await send(http, "POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    assert status == 201
    status, created_service = await send(
        http, "POST", "/api/v1/namespaces/team/services", service("web")
    )
    assert status == 201 and created_service["metadata"]["namespace"] == "team"
    status, _namespace = await send(http, "DELETE", "/api/v1/namespaces/team")
    assert status == 200
    status, _ = await send(http, "GET", "/api/v1/namespaces/team/services/web")
    assert status == 404
    status, _forbidden = await send(http, "DELETE", "/api/v1/namespaces/default")
    assert status == 403


# --- lists -------------------------------------------------------------------------------


async def test_list_selectors(http: aiohttp.ClientSession) -> None:
    await create_service(http, "a", app="web", tier="front")
    await create_service(http, "b", app="web", tier="back")
    await create_service(http, "c", app="db")

    async def names(**params: str) -> list[str]:
        status, body = await send(http, "GET", "/api/v1/services", **params)
        assert status == 200, body
        return [item["metadata"]["name"] for item in body["items"]]

    assert await names(labelSelector="app=web") == ["a", "b"]
    assert await names(labelSelector="app==web,tier!=front") == ["b"]
    assert await names(labelSelector="tier in (front,back)") == ["a", "b"]
    assert await names(labelSelector="tier notin (front)") == ["b", "c"]
    assert await names(labelSelector="tier") == ["a", "b"]
    assert await names(labelSelector="!tier") == ["c"]
    assert await names(fieldSelector="metadata.name=c") == ["c"]
    assert await names(fieldSelector="metadata.namespace=kube-system") == []


async def test_pagination_over_http(http: aiohttp.ClientSession) -> None:
    for index in range(5):
        await create_service(http, f"s{index}")
    seen: list[str] = []
    params = {"limit": "2"}
    versions = set()
    while True:
        status, page = await send(http, "GET", "/api/v1/services", **params)
        assert status == 200
        seen += [item["metadata"]["name"] for item in page["items"]]
        versions.add(page["metadata"]["resourceVersion"])
        token = page["metadata"].get("continue")
        if not token:
            break
        params = {"limit": "2", "continue": token}
        await create_service(http, f"late{len(seen)}")  # not visible in later pages
    assert seen == ["s0", "s1", "s2", "s3", "s4"]
    assert len(versions) == 1


async def test_table_for_kubectl(http: aiohttp.ClientSession) -> None:
    created = await create_service(http, "web")
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    async with http.get("/api/v1/services", headers={"Accept": accept}) as response:
        document = await response.json()
    assert document["kind"] == "Table"
    assert [c["name"] for c in document["columnDefinitions"]][:5] == [
        "Name",
        "Type",
        "Cluster-IP",
        "External-IP",
        "Port(s)",
    ]
    row = document["rows"][0]
    assert row["cells"][:5] == [
        "web",
        "ClusterIP",
        created["spec"]["clusterIP"],
        "<none>",
        "80/TCP",
    ]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["namespace"] == "default"


# --- watches -----------------------------------------------------------------------------


async def test_watch_from_a_version_sees_later_changes_only(http: aiohttp.ClientSession) -> None:
    before = await create_service(http, "before")
    response, events = await open_watch(
        http, "/api/v1/services", resourceVersion=before["metadata"]["resourceVersion"]
    )
    async with response:
        after = await create_service(http, "after")
        event = await events.next_change()
        assert event["type"] == "ADDED"
        assert event["object"]["metadata"]["name"] == "after"
        assert (
            event["object"]["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
        )
        await send(http, "DELETE", f"{SERVICES_URL}/before")
        deleted = await events.next_change()
        assert deleted["type"] == "DELETED"
        assert int(deleted["object"]["metadata"]["resourceVersion"]) > int(
            after["metadata"]["resourceVersion"]
        )


async def test_watch_without_version_lists_current_objects_first(
    http: aiohttp.ClientSession,
) -> None:
    await create_service(http, "existing")
    response, events = await open_watch(http, SERVICES_URL, watch="true")
    async with response:
        first = await events.next_change()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "existing")


async def test_bookmarks_carry_the_current_version(http: aiohttp.ClientSession) -> None:
    created = await create_service(http, "web")
    response, events = await open_watch(
        http,
        "/api/v1/services",
        resourceVersion=created["metadata"]["resourceVersion"],
        allowWatchBookmarks="true",
    )
    async with response:
        bookmark = await events.next()
        assert bookmark is not None and bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["kind"] == "Service"
        assert (
            bookmark["object"]["metadata"]["resourceVersion"]
            == created["metadata"]["resourceVersion"]
        )
        later = await create_service(http, "later")
        while True:
            event = await events.next()
            assert event is not None
            if (
                event["type"] == "BOOKMARK"
                and event["object"]["metadata"]["resourceVersion"]
                == later["metadata"]["resourceVersion"]
            ):
                break


async def test_no_bookmarks_unless_asked(http: aiohttp.ClientSession, server: DevApiServer) -> None:
    response, events = await open_watch(
        http,
        "/api/v1/services",
        resourceVersion=str(server.store.resource_version),
        timeoutSeconds="1",
    )
    async with response:
        assert await events.next() is None  # the stream ends at the timeout, empty


async def test_watch_from_a_compacted_version_gets_410_gone(
    http: aiohttp.ClientSession, server: DevApiServer
) -> None:
    created = await create_service(http, "web")
    await create_service(http, "other")
    server.compact()
    response, events = await open_watch(
        http, "/api/v1/services", resourceVersion=created["metadata"]["resourceVersion"]
    )
    async with response:
        error = await events.next()
        assert error is not None and error["type"] == "ERROR"
        status = error["object"]
        assert (status["kind"], status["status"], status["reason"], status["code"]) == (
            "Status",
            "Failure",
            "Expired",
            410,
        )
        assert await events.next() is None


async def test_watch_with_label_selector_sees_transitions(http: aiohttp.ClientSession) -> None:
    created = await create_service(http, "web", app="web")
    response, events = await open_watch(
        http,
        "/api/v1/services",
        labelSelector="app=web",
        resourceVersion=created["metadata"]["resourceVersion"],
    )
    url = f"{SERVICES_URL}/web"
    merge = "application/merge-patch+json"
    async with response:
        await send(
            http, "PATCH", url, {"metadata": {"labels": {"app": "other"}}}, content_type=merge
        )
        gone = await events.next_change()
        assert gone["type"] == "DELETED"
        assert gone["object"]["metadata"]["labels"] == {"app": "web"}
        await send(http, "PATCH", url, {"metadata": {"labels": {"x": "1"}}}, content_type=merge)
        await send(http, "PATCH", url, {"metadata": {"labels": {"app": "web"}}}, content_type=merge)
        back = await events.next_change()
        assert back["type"] == "ADDED"
        assert back["object"]["metadata"]["labels"] == {"app": "web", "x": "1"}
        await send(http, "PATCH", url, {"metadata": {"labels": {"y": "2"}}}, content_type=merge)
        modified = await events.next_change()
        assert modified["type"] == "MODIFIED"


async def test_watch_timeout_ends_the_stream(http: aiohttp.ClientSession) -> None:
    response, events = await open_watch(http, "/api/v1/services", timeoutSeconds="1")
    async with response:
        assert await events.next() is None


async def test_send_initial_events_ends_with_a_marked_bookmark(http: aiohttp.ClientSession) -> None:
    await create_service(http, "a")
    response, events = await open_watch(
        http,
        "/api/v1/services",
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
    )
    async with response:
        added = await events.next()
        assert added is not None and added["type"] == "ADDED"
        marker = await events.next()
        assert marker is not None and marker["type"] == "BOOKMARK"
        assert marker["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    status, _body = await send(http, "GET", "/api/v1/services", watch="1", sendInitialEvents="true")
    assert status == 422


async def test_close_watches_drops_connections(
    http: aiohttp.ClientSession, server: DevApiServer
) -> None:
    response, events = await open_watch(http, "/api/v1/services")
    async with response:
        for _ in range(int(WAIT * 100)):
            if server.open_watch_count:
                break
            await asyncio.sleep(0.01)
        assert server.close_watches() == 1
        with pytest.raises(aiohttp.ClientError):
            while await events.next() is not None:
                pass


async def test_slow_watcher_is_closed_cleanly(http: aiohttp.ClientSession) -> None:
    server = DevApiServer(watch_queue_size=3)
    await server.start()
    try:
        async with aiohttp.ClientSession(base_url=server.url) as client:
            response, events = await open_watch(client, "/api/v1/services")
            async with response:
                for _ in range(int(WAIT * 100)):
                    if server.open_watch_count:
                        break
                    await asyncio.sleep(0.01)
                server.load_objects([service(f"s{index}") for index in range(10)])
                seen = 0
                while await events.next() is not None:
                    seen += 1
                assert seen < 10
    finally:
        await server.stop()


async def test_stop_ends_open_watches(http: aiohttp.ClientSession) -> None:
    server = DevApiServer()
    await server.start()
    async with aiohttp.ClientSession(base_url=server.url) as client:
        response, events = await open_watch(client, "/api/v1/services")
        async with response:
            for _ in range(int(WAIT * 100)):
                if server.open_watch_count:
                    break
                await asyncio.sleep(0.01)
            await server.stop()
            assert await events.next() is None


async def test_unknown_fields_follow_field_validation(http: aiohttp.ClientSession) -> None:
    body = service("web")
    body["spec"]["prots"] = [{"port": 1}]
    body["spec"]["ports"][0]["colour"] = "blue"
    status, strict = await send(http, "POST", SERVICES_URL, body, fieldValidation="Strict")
    assert status == 400
    assert strict["message"] == (
        'Service in version "v1" cannot be handled as a Service: strict decoding error: '
        'unknown field "spec.ports[0].colour", unknown field "spec.prots"'
    )
    async with http.post(SERVICES_URL, json=body) as response:
        assert response.status == 201
        assert response.headers.getall("Warning") == [
            '299 - "unknown field \\"spec.ports[0].colour\\""',
            '299 - "unknown field \\"spec.prots\\""',
        ]
        created = await response.json()
    assert "prots" not in created["spec"]
    assert "colour" not in created["spec"]["ports"][0]
    status, _ = await send(http, "GET", SERVICES_URL, fieldValidation="Sometimes")
    assert status == 200  # only writes look at it
    status, _ = await send(http, "POST", SERVICES_URL, body, fieldValidation="Sometimes")
    assert status == 400


async def test_legacy_watch_path_watches_one_object(http: aiohttp.ClientSession) -> None:
    await create_service(http, "web")
    await create_service(http, "other")
    response = await http.get("/api/v1/watch/namespaces/default/services/web")
    async with response:
        events = EventReader(response)
        first = await events.next_change()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "web")
        merge = "application/merge-patch+json"
        patch = {"metadata": {"labels": {"x": "1"}}}
        await send(http, "PATCH", f"{SERVICES_URL}/other", patch, content_type=merge)
        await send(http, "PATCH", f"{SERVICES_URL}/web", patch, content_type=merge)
        second = await events.next_change()
        assert (second["type"], second["object"]["metadata"]["name"]) == ("MODIFIED", "web")


async def test_table_watch_for_kubectl_get_w(http: aiohttp.ClientSession) -> None:
    await create_service(http, "web")
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    response = await http.get(SERVICES_URL, params={"watch": "1"}, headers={"Accept": accept})
    async with response:
        event = await EventReader(response).next_change()
        assert event["type"] == "ADDED"
        assert event["object"]["kind"] == "Table"
        assert event["object"]["rows"][0]["cells"][0] == "web"
