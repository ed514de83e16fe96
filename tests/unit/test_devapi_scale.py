"""10,000 Services: a paginated list returns every one of them (timings printed, not checked)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from kproxy.devcluster.apiserver import DevApiServer

COUNT = 10_000


def service(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{index:05d}", "namespace": "default"},
        "spec": {"selector": {"app": f"a{index}"}, "ports": [{"name": "http", "port": 80}]},
    }


async def test_ten_thousand_services_list_completely_through_pagination() -> None:
    server = DevApiServer()
    await server.start()
    try:
        started = time.perf_counter()
        server.load_objects(service(index) for index in range(COUNT))
        loaded = time.perf_counter() - started
        names: list[str] = []
        pages = 0
        params = {"limit": "500"}
        async with aiohttp.ClientSession(base_url=server.url) as http:
            started = time.perf_counter()
            async with http.get("/api/v1/services") as response:
                whole = await response.read()
            whole_list = time.perf_counter() - started
            started = time.perf_counter()
            while True:
                async with http.get("/api/v1/services", params=params) as response:
                    assert response.status == 200
                    page = await response.json()
                pages += 1
                names += [item["metadata"]["name"] for item in page["items"]]
                token = page["metadata"].get("continue")
                if not token:
                    break
                assert page["metadata"]["remainingItemCount"] == COUNT - len(names)
                params = {"limit": "500", "continue": token}
            paginated = time.perf_counter() - started
        assert len(names) == COUNT
        assert len(set(names)) == COUNT
        assert names == sorted(names)
        assert pages == COUNT // 500
        print(
            f"\n10k Services: load {loaded:.2f}s, one list {whole_list * 1000:.0f} ms "
            f"({len(whole) / 1e6:.1f} MB), {pages} pages {paginated * 1000:.0f} ms"
        )
    finally:
        await server.stop()
