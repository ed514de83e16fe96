"""/configz: the effective configuration in the shape kube-proxy serves it (its internal
KubeProxyConfiguration under "kubeproxy.config.k8s.io": Go field names, Go durations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from kproxy.clock import FakeClock
from kproxy.config import parse_run_config
from kproxy.configz import CONFIGZ_NAME, configz_document
from kproxy.healthz import ProxierHealth
from kproxy.metrics import MetricsServer, ProxyMetrics
from kproxy.rejections import RejectionLog
from kproxy.state import StateTracker

TOP_LEVEL = {
    "FeatureGates", "ClientConnection", "logging", "HostnameOverride", "BindAddress",
    "HealthzBindAddress", "MetricsBindAddress", "BindAddressHardFail", "EnableProfiling",
    "ShowHiddenMetricsForVersion", "Mode", "IPTables", "IPVS", "NFTables", "Winkernel",
    "DetectLocalMode", "DetectLocal", "NodePortAddresses", "SyncPeriod", "MinSyncPeriod",
    "ConfigSyncPeriod", "Linux", "Windows",
}


def configz_of(argv: list[str]) -> dict[str, Any]:
    document = configz_document(parse_run_config(argv, gethostname=lambda: "Node-A"))
    assert list(document) == [CONFIGZ_NAME]
    body: dict[str, Any] = document[CONFIGZ_NAME]  # type: ignore[assignment]
    return body


def test_from_flags() -> None:
    body = configz_of([
        "--iptables-sync-period=1m", "--iptables-min-sync-period=250ms",
        "--cluster-cidr=10.244.0.0/16,fd00::/48", "--masquerade-all",
        "--nodeport-addresses=10.0.0.0/8", "--bind-address-hard-fail", "-v=3",
        "--metrics-bind-address=127.0.0.1:9999",
    ])
    assert set(body) == TOP_LEVEL
    assert body["SyncPeriod"] == "1m0s" and body["MinSyncPeriod"] == "250ms"
    assert body["ConfigSyncPeriod"] == "15m0s"
    assert body["DetectLocal"] == {"BridgeInterface": "", "InterfaceNamePrefix": "",
                                   "ClusterCIDRs": ["10.244.0.0/16", "fd00::/48"]}
    assert body["DetectLocalMode"] == "ClusterCIDR"
    assert body["Linux"]["MasqueradeAll"] is True
    assert body["Linux"]["OOMScoreAdj"] == -999
    assert body["Linux"]["Conntrack"]["TCPEstablishedTimeout"] == "24h0m0s"
    assert body["NodePortAddresses"] == ["10.0.0.0/8"]
    assert body["BindAddressHardFail"] is True
    assert body["MetricsBindAddress"] == "127.0.0.1:9999"
    assert body["HostnameOverride"] == "node-a"
    assert body["IPTables"] == {"MasqueradeBit": 14, "LocalhostNodePorts": True}
    assert body["ClientConnection"]["QPS"] == 5
    assert body["logging"]["verbosity"] == 3 and body["logging"]["format"] == "text"
    assert "kind" not in body and "apiVersion" not in body


def test_from_a_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "mode: userspace\nclientConnection: {kubeconfig: /k}\n"
        "iptables: {masqueradeBit: 9, syncPeriod: 2m30s, localhostNodePorts: false}\n"
        "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}\n"
        "healthzBindAddress: 127.0.0.1:1\nbindAddressHardFail: true\n"
    )
    body = configz_of([f"--config={config}"])
    assert set(body) == TOP_LEVEL
    assert body["Mode"] == "userspace"
    assert body["ClientConnection"]["Kubeconfig"] == "/k"
    assert body["IPTables"] == {"MasqueradeBit": 9, "LocalhostNodePorts": False}
    assert body["SyncPeriod"] == "2m30s" and body["MinSyncPeriod"] == "1s"
    assert body["DetectLocalMode"] == "BridgeInterface"
    assert body["DetectLocal"]["BridgeInterface"] == "cbr0"
    assert body["DetectLocal"]["ClusterCIDRs"] is None
    assert body["HealthzBindAddress"] == "127.0.0.1:1"
    assert body["BindAddressHardFail"] is True
    assert body["NFTables"] == {"MasqueradeBit": 14}


async def test_served_on_the_metrics_port() -> None:
    config = parse_run_config(["--iptables-sync-period=45s"], gethostname=lambda: "n1")
    metrics = ProxyMetrics(
        mode="iptables", node_name="n1", tracker=StateTracker(), rejections=RejectionLog(),
        health=ProxierHealth(FakeClock(), 60.0), proxier=lambda: None,
    )
    server = MetricsServer(metrics, "127.0.0.1:0", config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.port}/configz"
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            document = await response.json()
    finally:
        await server.close()
    assert document == configz_document(config)
    assert document[CONFIGZ_NAME]["SyncPeriod"] == "45s"
