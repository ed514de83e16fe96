"""Restarting the dev API server: same store in-process, state files, and the CLI process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kproxy.devcluster.apiserver import SERVICES, DevApiServer
from kproxy.devcluster.apiserver.command import parse_listen

WAIT = 20.0  # upper bound for a subprocess to come up or go down (never asserted)


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}]},
    }


async def get_json(url: str, **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        return response.status, await response.json()


async def first_watch_event(url: str, resource_version: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url + "/api/v1/services",
            params={"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": "5"},
        ) as response,
    ):
        line = await asyncio.wait_for(response.content.readline(), WAIT)
        event: dict[str, Any] = json.loads(line)
        return event


async def test_restart_on_the_same_port_with_the_same_store() -> None:
    first = DevApiServer()
    await first.start()
    first.load_objects([service("a"), service("b")])
    version = first.store.resource_version
    port = first.port
    await first.stop()

    second = DevApiServer(first.store)
    await second.start(port=port)
    try:
        assert second.url == first.url
        status, listed = await get_json(second.url + "/api/v1/services")
        assert status == 200
        assert [item["metadata"]["name"] for item in listed["items"]] == ["a", "b"]
        assert listed["metadata"]["resourceVersion"] == str(version)
        # History did not survive the restart: resuming from before it is 410 Gone.
        event = await first_watch_event(second.url, str(version - 1))
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
        created = second.load_objects([service("c")])[0]
        assert created.resource_version == version + 1
    finally:
        await second.stop()


async def test_state_file_keeps_objects_versions_and_allocations(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = DevApiServer(state_file=state)
    await first.start()
    web = first.load_objects([service("web")])[0]
    version = first.store.resource_version
    await first.stop()
    assert state.exists()

    second = DevApiServer(state_file=state)
    await second.start()
    try:
        restored = second.store.get(SERVICES, "default", "web")
        assert restored.body == web.body
        assert second.store.resource_version == version
        clash = service("clash")
        clash["spec"]["clusterIP"] = web.body["spec"]["clusterIP"]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                second.url + "/api/v1/namespaces/default/services", json=clash
            ) as response,
        ):
            assert response.status == 422
        event = await first_watch_event(second.url, str(version - 1))
        assert event["type"] == "ERROR"
    finally:
        await second.stop()


async def test_state_is_saved_while_running(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    server = DevApiServer(state_file=state, state_save_interval=0.02)
    await server.start()
    try:
        server.load_objects([service("web")])
        for _ in range(int(WAIT * 100)):
            if state.exists():
                saved = json.loads(state.read_text())
                if saved["resourceVersion"] == str(server.store.resource_version):
                    break
            await asyncio.sleep(0.01)
        names = [item["metadata"]["name"] for item in json.loads(state.read_text())["items"]]
        assert "web" in names
    finally:
        await server.stop()


async def wait_for_file(path: Path, process: asyncio.subprocess.Process) -> None:
    for _ in range(int(WAIT * 50)):
        if await asyncio.to_thread(path.exists):
            return
        if process.returncode is not None:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared (exit code {process.returncode})")


async def run_cli(tmp_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kproxy.devcluster.apiserver",
        "--listen",
        "127.0.0.1:0",
        "--write-kubeconfig",
        str(kubeconfig),
        "--state-file",
        str(tmp_path / "state.json"),
        *extra,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await wait_for_file(kubeconfig, process)
    except AssertionError:
        process.kill()
        raise
    config = yaml.safe_load(kubeconfig.read_text())
    return process, str(config["clusters"][0]["cluster"]["server"])


async def stop_cli(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_cli_loads_manifests_and_survives_a_restart(tmp_path: Path) -> None:
    manifest = tmp_path / "objects.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [{**service("web"), "metadata": {"name": "web", "namespace": "team"}}],
                },
            ]
        )
    )
    process, url = await run_cli(
        tmp_path, "--load", str(manifest), "--service-cidr", "10.100.0.0/24,fd00:1::/120"
    )
    try:
        status, listed = await get_json(url + "/api/v1/namespaces/team/services")
        assert status == 200
        web = listed["items"][0]
        assert web["spec"]["clusterIP"].startswith("10.100.0.")
        version = int(listed["metadata"]["resourceVersion"])
    finally:
        log = await stop_cli(process)
    assert "shutting down" in log

    process, url = await run_cli(tmp_path)
    try:
        status, listed = await get_json(url + "/api/v1/namespaces/team/services")
        assert listed["items"][0] == web
        assert int(listed["metadata"]["resourceVersion"]) == version
    finally:
        await stop_cli(process)


async def test_cli_reports_a_bad_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("- just\n- a list\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kproxy.devcluster.apiserver",
        "--listen",
        "127.0.0.1:0",
        "--load",
        str(manifest),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 1
    assert b"must be an object" in stderr


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:99999", "host:x"])
def test_listen_addresses_are_validated(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(text)


def test_listen_accepts_ipv6_brackets() -> None:
    assert parse_listen("[::1]:8080") == ("::1", 8080)
