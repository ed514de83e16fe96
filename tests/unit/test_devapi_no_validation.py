"""``kproxy devapi --no-validation``: what validation refuses is stored as sent, listed and
watched (with kproxy's label selector), and the server keeps working; valid objects are still
defaulted and allocated, and junk never frees what a valid object holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kproxy.devcluster.apiserver import DevApiServer
from kproxy.model.labels import label_selector

SERVICES_URL = "/api/v1/namespaces/default/services"
SLICES_URL = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
SELECTOR = label_selector("")
WAIT = 10.0  # bounds a hang; never asserted

JUNK: list[dict[str, Any]] = [
    {"metadata": {"name": "Bad\x00Name", "namespace": ""}, "spec": {"ports": "80"}},
    {"metadata": {"name": "junk-1", "labels": ["not", "a", "map"]}, "spec": []},
    {"metadata": {"name": "junk-2", "labels": {"app": 7}},
     "spec": {"clusterIP": ["10.96.0.1"], "ports": [{"port": "80", "nodePort": "x"}],
              "type": {"deep": [[[[{}]]]]}}, "status": "weird"},
    {"metadata": {"name": "junk-3", "namespace": "Team\u00e9\x1b"},
     "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "10.0.0.0/8", "port": 70000}]},
     "addressType": 4, "endpoints": [{"addresses": ["10.0.0.256"]}] * 1500},
    {"metadata": {"name": "x" * 300}, "spec": {"ports": [{"port": 80}] * 3000}},
    # Unknown fields are named in Warning headers: a line break there must not break them.
    {"metadata": {"name": "junk-5"}, "spec": {}, "bad\r\nkey\x00": 1, "addressType": "x"},
]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    server = DevApiServer(bookmark_interval=0.05, validate=False)
    await server.start()
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session
    await server.stop()


async def send(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               **params: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with http.request(method, url, data=data, params=params,
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


def valid_service(name: str, cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


async def test_junk_is_stored_listed_and_watched_beside_a_valid_service(
    http: aiohttp.ClientSession,
) -> None:
    status, valid = await send(http, "POST", SERVICES_URL, valid_service("web"))
    assert status == 201 and valid["spec"]["clusterIP"]  # still defaulted and allocated
    async with http.get("/api/v1/services", params={"watch": "1", "labelSelector": SELECTOR,
                                               "resourceVersion": valid["metadata"][
                                                   "resourceVersion"]}) as watch:
        for url in (SERVICES_URL, SLICES_URL):
            for junk in JUNK:
                status, stored = await send(http, "POST", url, junk)
                assert status == 201, stored
                metadata = stored["metadata"]
                assert metadata["name"] == junk["metadata"]["name"]
                assert metadata["uid"] and metadata["resourceVersion"]
                assert stored["spec"] == junk["spec"]
        seen: list[str] = []
        async with asyncio.timeout(WAIT):
            while len(seen) < len(JUNK):
                event = json.loads(await watch.content.readline())
                seen.append(event["object"]["metadata"]["name"])
    assert seen == [junk["metadata"]["name"] for junk in JUNK]
    in_default = {junk["metadata"]["name"] for junk in JUNK
                  if "namespace" not in junk["metadata"]}
    everywhere = {junk["metadata"]["name"] for junk in JUNK}
    for url, expected in ((SERVICES_URL, in_default), ("/api/v1/services", everywhere),
                          (SLICES_URL, in_default),
                          ("/apis/discovery.k8s.io/v1/endpointslices", everywhere)):
        status, listed = await send(http, "GET", url, labelSelector=SELECTOR)
        assert status == 200, listed
        names = {item["metadata"]["name"] for item in listed["items"]}
        # Junk with labels that cannot be selected on is listed as unlabelled.
        assert expected <= names, url


async def test_junk_never_takes_or_frees_what_a_valid_service_holds(
    http: aiohttp.ClientSession,
) -> None:
    status, valid = await send(http, "POST", SERVICES_URL, valid_service("web"))
    cluster_ip = valid["spec"]["clusterIP"]
    # A junk copy claiming the same address, then deleted: the address stays taken.
    junk = valid_service("copy", cluster_ip)
    junk["spec"]["ports"] = [{"port": "80"}]
    assert (await send(http, "POST", SERVICES_URL, junk))[0] == 201
    assert (await send(http, "DELETE", f"{SERVICES_URL}/copy"))[0] == 200
    status, refused = await send(http, "POST", SERVICES_URL, valid_service("other", cluster_ip))
    assert status == 201 and refused["spec"]["clusterIP"] == cluster_ip  # stored, unvalidated
    assert (await send(http, "DELETE", f"{SERVICES_URL}/other"))[0] == 200
    status, kept = await send(http, "GET", f"{SERVICES_URL}/web")
    assert status == 200 and kept["spec"]["clusterIP"] == cluster_ip


async def test_an_invalid_update_of_a_valid_service_is_stored_and_releases_its_address(
    http: aiohttp.ClientSession,
) -> None:
    status, valid = await send(http, "POST", SERVICES_URL, valid_service("web"))
    cluster_ip = valid["spec"]["clusterIP"]
    broken = valid_service("web")
    broken["spec"]["ports"] = [{"name": "HTTP\x00", "port": 0}]
    status, stored = await send(http, "PUT", f"{SERVICES_URL}/web", broken)
    assert status == 200 and stored["spec"] == broken["spec"]
    assert stored["metadata"]["uid"] == valid["metadata"]["uid"]
    # The address went back with the valid version: a new valid Service may take it.
    status, again = await send(http, "POST", SERVICES_URL, valid_service("again", cluster_ip))
    assert status == 201 and again["spec"]["clusterIP"] == cluster_ip


@pytest.mark.parametrize("body", [
    [1, 2], "text", {"metadata": ["x"]}, {"metadata": {"name": 5}}, {"metadata": {}},
])
async def test_what_storage_needs_is_still_required(http: aiohttp.ClientSession,
                                                   body: Any) -> None:
    status, answer = await send(http, "POST", SERVICES_URL, body)
    assert status == 400, answer
    assert (await send(http, "GET", SERVICES_URL))[0] == 200


async def test_validation_is_the_default() -> None:
    async with DevApiServer() as server, aiohttp.ClientSession(base_url=server.url) as session:
        status, _ = await send(session, "POST", SERVICES_URL, JUNK[2])
        assert status == 422
