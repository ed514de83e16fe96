"""``--config``: the KubeProxyConfiguration v1alpha1 file, its checks and its precedence."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kproxy.config import (
    MAX_CONFIG_FILE_BYTES,
    ConfigError,
    DetectLocalMode,
    LoggingFormat,
    ProxyConfig,
    ProxyMode,
    parse_run_config,
)

HEADER = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

# What `kubeadm init` (1.31+) stores in the kube-proxy ConfigMap's config.conf, with the
# pod subnet 10.244.0.0/16: every field present, unset ones as null, "" or 0.
KUBEADM_CONFIG_CONF = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"""


def write(tmp_path: Path, text: str, name: str = "config.conf") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path: Path, body: str, *flags: str) -> ProxyConfig:
    path = write(tmp_path, HEADER + body)
    return parse_run_config(["--config", path, *flags], gethostname=lambda: "os-host")


def load_error(tmp_path: Path, text: str, *flags: str) -> tuple[ConfigError, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        parse_run_config(["--config", path, *flags], gethostname=lambda: "os-host")
    return raised.value, path


def test_kubeadm_config_conf_parses_to_kube_proxy_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, KUBEADM_CONFIG_CONF)
    config = parse_run_config(
        [f"--config={path}", "--hostname-override=worker-1"], gethostname=lambda: "unused"
    )
    assert config == ProxyConfig(
        hostname="worker-1",
        kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
        config_file=path,
        cluster_cidrs=("10.244.0.0/16",),
        detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
    )
    # Every field there is known and either used or at its zero value: nothing to report.
    assert config.notices == ()


def test_minimal_file_gives_kube_proxy_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config == ProxyConfig(hostname="os-host", config_file=config.config_file)


@pytest.mark.parametrize(
    ("body", "attribute", "expected"),
    [
        ("mode: userspace", "proxy_mode", ProxyMode.USERSPACE),
        ("mode: iptables", "proxy_mode", ProxyMode.IPTABLES),
        ('mode: ""', "proxy_mode", ProxyMode.IPTABLES),
        ("clientConnection: {kubeconfig: /k.conf}", "kubeconfig", "/k.conf"),
        ("clientConnection: {kubeconfig: ''}", "kubeconfig", None),
        ("hostnameOverride: Node-B", "hostname", "node-b"),
        ('hostnameOverride: ""', "hostname", "os-host"),
        (
            "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56",
            "cluster_cidrs",
            ("10.244.0.0/16", "fd00:10:244::/56"),
        ),
        ("clusterCIDR: 10.244.0.0/16", "detect_local_mode", DetectLocalMode.CLUSTER_CIDR),
        ("detectLocalMode: NodeCIDR", "detect_local_mode", DetectLocalMode.NODE_CIDR),
        (
            "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cni0}",
            "pod_bridge_interface",
            "cni0",
        ),
        (
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: veth}",
            "pod_interface_name_prefix",
            "veth",
        ),
        ("iptables: {masqueradeAll: true}", "masquerade_all", True),
        ("iptables: {masqueradeBit: 0}", "masquerade_bit", 0),
        ("iptables: {masqueradeBit: 31}", "masquerade_bit", 31),
        ("iptables: {localhostNodePorts: false}", "localhost_nodeports", False),
        ("iptables: {syncPeriod: 1m0s}", "sync_period", 60.0),
        ("iptables: {minSyncPeriod: 2s}", "min_sync_period", 2.0),
        # v1alpha1 defaulting: a zero duration means "unset", so the default applies.
        ("iptables: {minSyncPeriod: 0s}", "min_sync_period", 1.0),
        ("iptables: {syncPeriod: 0s}", "sync_period", 30.0),
        ("healthzBindAddress: 127.0.0.1:1234", "healthz_bind_address", "127.0.0.1:1234"),
        ("healthzBindAddress: 10.0.0.1", "healthz_bind_address", "10.0.0.1:10256"),
        ('healthzBindAddress: ""', "healthz_bind_address", "0.0.0.0:10256"),
        ("metricsBindAddress: 0.0.0.0:10249", "metrics_bind_address", "0.0.0.0:10249"),
        ("metricsBindAddress: '::'", "metrics_bind_address", "[::]:10249"),
        ('bindAddress: "::"', "healthz_bind_address", "[::]:10256"),
        ('bindAddress: "::"', "metrics_bind_address", "[::1]:10249"),
        ("nodePortAddresses: [primary]", "nodeport_addresses", ("primary",)),
        (
            "nodePortAddresses: [10.0.0.0/8, 'fd00::/64']",
            "nodeport_addresses",
            ("10.0.0.0/8", "fd00::/64"),
        ),
        ("nodePortAddresses: []", "nodeport_addresses", ()),
        ("configSyncPeriod: 5m", "config_sync_period", 300.0),
        ("logging: {verbosity: 3}", "verbosity", 3),
        ("logging: {format: json}", "logging_format", LoggingFormat.JSON),
        ("udpIdleTimeout: 1s", "userspace_udp_idle_timeout", 1.0),
        ("udpIdleTimeout: 0s", "userspace_udp_idle_timeout", 0.25),
        ("portRange: 30000-30100", "userspace_port_range", (30000, 30100)),
        ("iptables: null\nclusterCIDR: null", "masquerade_all", False),
    ],
)
def test_file_fields(tmp_path: Path, body: str, attribute: str, expected: object) -> None:
    assert getattr(load(tmp_path, body), attribute) == expected


def test_every_known_field_is_accepted(tmp_path: Path) -> None:
    body = """
featureGates: {SomeGate: true}
clientConnection: {kubeconfig: /k, acceptContentTypes: "", contentType: json, qps: 7.5, burst: 20}
logging:
  format: text
  flushFrequency: 5s
  verbosity: 2
  vmodule: [{filePattern: "proxier*", verbosity: 4}]
  options: {text: {splitStream: true, infoBufferSize: 64Ki}, json: {infoBufferSize: 0}}
hostnameOverride: n
bindAddress: 10.0.0.5
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
bindAddressHardFail: true
enableProfiling: true
showHiddenMetricsForVersion: "1.32"
mode: iptables
iptables: {masqueradeBit: 14, masqueradeAll: false, localhostNodePorts: true,
           snatNodeInternalIP: false, syncPeriod: 30s, minSyncPeriod: 1s}
ipvs: {syncPeriod: 30s, minSyncPeriod: 0s, scheduler: rr, excludeCIDRs: [10.0.0.0/8],
       strictARP: true, tcpTimeout: 0s, tcpFinTimeout: 0s, udpTimeout: 0s}
nftables: {masqueradeBit: 14, masqueradeAll: false, syncPeriod: 30s, minSyncPeriod: 1s}
winkernel: {networkName: x, sourceVip: 10.0.0.9, enableDSR: false, rootHnsEndpointName: y,
            forwardHealthCheckVip: false}
detectLocalMode: ClusterCIDR
detectLocal: {bridgeInterface: "", interfaceNamePrefix: ""}
clusterCIDR: 10.244.0.0/16
nodePortAddresses: [10.0.0.0/8]
oomScoreAdj: -999
conntrack: {maxPerCore: 32768, min: 131072, tcpEstablishedTimeout: 24h0m0s,
            tcpCloseWaitTimeout: 1h0m0s, tcpBeLiberal: false, udpTimeout: 30s,
            udpStreamTimeout: 2m}
configSyncPeriod: 15m0s
portRange: ""
windowsRunAsService: false
udpIdleTimeout: 250ms
"""
    config = load(tmp_path, body)
    assert config.hostname == "n"
    assert config.verbosity == 2
    assert config.nodeport_addresses == ("10.0.0.0/8",)
    infos = [notice.message for notice in config.notices if notice.level == logging.INFO]
    assert len(infos) == 1
    assert "no effect in kproxy" in infos[0]
    for ignored in ("ipvs.scheduler", "conntrack.maxPerCore", "oomScoreAdj", "featureGates"):
        assert ignored in infos[0]
    for used in ("iptables.masqueradeBit", "clusterCIDR", "hostnameOverride"):
        assert used not in infos[0]


def test_json_config_is_accepted(tmp_path: Path) -> None:
    document = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "userspace",
        "iptables": {"masqueradeBit": 5, "syncPeriod": "10s"},
    }
    path = write(tmp_path, json.dumps(document, indent="\t"), "config.json")
    config = parse_run_config(["--config", path], gethostname=lambda: "h")
    assert (config.proxy_mode, config.masquerade_bit, config.sync_period) == (
        ProxyMode.USERSPACE,
        5,
        10.0,
    )


def test_invalid_value_message_names_file_and_field(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, HEADER + "iptables:\n  masqueradeBit: 40\n")
    assert (error.field, error.source) == ("iptables.masqueradeBit", path)
    assert str(error) == (
        f"config {path}: iptables.masqueradeBit: must be an integer between 0 and 31, got 40"
    )


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        # unknown fields
        ("foo: 1", "foo", "unknown field"),
        ("iptables: {masqueradBit: 1}", "iptables.masqueradBit", "did you mean masqueradeBit?"),
        ("detectLocal: {bridge: br0}", "detectLocal.bridge", "unknown field"),
        ("logging: {options: {xml: {}}}", "logging.options.xml", "unknown field"),
        ("1: x", "1", "unknown field"),
        ("masqueradeAll: null", "masqueradeAll", "unknown field"),
        # wrong types
        ("iptables: {masqueradeBit: '14'}", "iptables.masqueradeBit", 'got string "14"'),
        ("iptables: {masqueradeBit: true}", "iptables.masqueradeBit", "must be an integer"),
        ("iptables: {masqueradeBit: 1.5}", "iptables.masqueradeBit", "must be an integer"),
        ("iptables: {masqueradeBit: 4294967296}", "iptables.masqueradeBit", "an integer"),
        ("iptables: {masqueradeAll: 'true'}", "iptables.masqueradeAll", "must be a boolean"),
        ("iptables: {syncPeriod: 30}", "iptables.syncPeriod", "must be a duration string"),
        ("iptables: {syncPeriod: soon}", "iptables.syncPeriod", 'got string "soon"'),
        ("iptables: []", "iptables", "must be a mapping, got a list"),
        ("nodePortAddresses: 10.0.0.0/8", "nodePortAddresses", "must be a list"),
        ("nodePortAddresses: [1]", "nodePortAddresses[0]", "must be a string"),
        ("nodePortAddresses: [null]", "nodePortAddresses[0]", "must not be null"),
        ("featureGates: {A: maybe}", "featureGates.A", "must be a boolean"),
        ("clusterCIDR: 10", "clusterCIDR", "must be a string, got integer 10"),
        ("mode: [iptables]", "mode", "must be a string"),
        ("logging: {verbosity: -1}", "logging.verbosity", "non-negative integer"),
        ("clientConnection: {qps: fast}", "clientConnection.qps", "must be a number"),
        ("logging: {flushFrequency: often}", "logging.flushFrequency", "duration string"),
        ("hostnameOverride: 2024-01-01", "hostnameOverride", "must be a string, got a date"),
        # invalid values
        ("mode: ipvs", "mode", "iptables and userspace modes, not 'ipvs'"),
        ("mode: nftables", "mode", "not 'nftables'"),
        ("mode: fast", "mode", "must be iptables or userspace"),
        ("clusterCIDR: 10.244.0.0", "clusterCIDR", "must be a CIDR"),
        ("clusterCIDR: 10.0.0.0/8,11.0.0.0/8", "clusterCIDR", "one IPv4 and one IPv6"),
        ("detectLocalMode: Bridge", "detectLocalMode", "must be ClusterCIDR"),
        (
            "detectLocalMode: BridgeInterface",
            "detectLocal.bridgeInterface",
            "must be set when the detect-local mode is BridgeInterface",
        ),
        (
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: ''}",
            "detectLocal.interfaceNamePrefix",
            "must be set",
        ),
        ("healthzBindAddress: 'localhost:10256'", "healthzBindAddress", "IP address"),
        ("metricsBindAddress: '1.2.3.4:0'", "metricsBindAddress", "port must be"),
        ("bindAddress: nodeip", "bindAddress", "must be an IP address"),
        ("nodePortAddresses: [10.0.0.0/40]", "nodePortAddresses", "must be a CIDR"),
        ("nodePortAddresses: [primary, 10.0.0.0/8]", "nodePortAddresses", "cannot be combined"),
        ("iptables: {syncPeriod: -1s}", "iptables.syncPeriod", "must be greater than 0"),
        ("iptables: {minSyncPeriod: -1s}", "iptables.minSyncPeriod", "must not be negative"),
        (
            "iptables: {syncPeriod: 5s, minSyncPeriod: 10s}",
            "iptables.syncPeriod",
            "must be at least iptables.minSyncPeriod",
        ),
        ("configSyncPeriod: -1s", "configSyncPeriod", "must be greater than 0"),
        ("oomScoreAdj: 2000", "oomScoreAdj", "between -1000 and 1000"),
        ("conntrack: {maxPerCore: -1}", "conntrack.maxPerCore", "at least 0"),
        ("conntrack: {udpTimeout: -5s}", "conntrack.udpTimeout", "must not be negative"),
        ("clientConnection: {burst: -1}", "clientConnection.burst", "at least 0"),
        ("logging: {format: xml}", "logging.format", "must be text or json"),
        ("udpIdleTimeout: -1s", "udpIdleTimeout", "must be greater than 0"),
        ("portRange: lots", "portRange", "must be a port range"),
        ("hostnameOverride: '   '", "hostnameOverride", "must not be blank"),
    ],
)
def test_invalid_file_fields(tmp_path: Path, body: str, field: str, fragment: str) -> None:
    error, path = load_error(tmp_path, HEADER + body + "\n")
    assert error.field == field
    assert error.source == path
    assert fragment in error.message
    assert str(error).startswith(f"config {path}: {field}: ")


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("kind: KubeProxyConfiguration\n", "apiVersion", "missing"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n",
            "apiVersion",
            "must be kubeproxy.config.k8s.io/v1alpha1",
        ),
        ("apiVersion: kubeproxy.config.k8s.io/v1alpha1\n", "kind", "missing"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
            "kind",
            "must be KubeProxyConfiguration",
        ),
        ("- mode: iptables\n", "", "must be a KubeProxyConfiguration mapping, got a list"),
        ("", "", "file is empty"),
        ("# only a comment\n", "", "file is empty"),
        (HEADER + "iptables: {masqueradeAll: true\n", "", "invalid YAML at line"),
        (HEADER + "mode: [\n", "", "invalid YAML"),
        (HEADER + "---\nmode: iptables\n", "", "invalid YAML"),
        ('{"apiVersion": "x",', "", "invalid JSON at line 1"),
        ("[" * 5000 + "]" * 5000, "", "nested too deeply"),
    ],
)
def test_unusable_files(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    error, path = load_error(tmp_path, text)
    assert error.field == field
    assert error.source == path
    assert fragment in error.message


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    error, _ = load_error(tmp_path, HEADER + "iptables:\n  masqueradeAll: true\n bad: 1\n")
    assert "line 5" in error.message


def test_non_utf8_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.conf"
    path.write_bytes(HEADER.encode() + b"mode: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_run_config(["--config", str(path)], gethostname=lambda: "h")


def test_missing_file_names_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as raised:
        parse_run_config([f"--config={missing}"], gethostname=lambda: "h")
    assert raised.value.field == "--config"
    assert str(missing) in raised.value.message


def test_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    body = HEADER + "mode: userspace\n"
    padding = "#" * (MAX_CONFIG_FILE_BYTES - len(body) - 1) + "\n"
    path = write(tmp_path, body + padding)
    assert Path(path).stat().st_size == MAX_CONFIG_FILE_BYTES
    config = parse_run_config(["--config", path], gethostname=lambda: "h")
    assert config.proxy_mode is ProxyMode.USERSPACE


def test_file_over_the_size_limit_is_rejected_before_parsing(tmp_path: Path) -> None:
    # Invalid YAML past the limit: the size check must come first.
    text = HEADER + "mode: [" + "x" * MAX_CONFIG_FILE_BYTES
    error, _ = load_error(tmp_path, text)
    assert "larger than the 1024 KiB limit" in error.message


# -- precedence -----------------------------------------------------------------------------


def test_file_values_win_over_flags(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "mode: userspace\niptables: {masqueradeBit: 3, syncPeriod: 10s}\n",
        "--proxy-mode=iptables",
        "--iptables-masquerade-bit=7",
        "--iptables-sync-period=1m",
    )
    assert (config.proxy_mode, config.masquerade_bit, config.sync_period) == (
        ProxyMode.USERSPACE,
        3,
        10.0,
    )


def test_bind_address_comes_from_the_file_and_the_flag_is_ignored(tmp_path: Path) -> None:
    assert load(tmp_path, 'bindAddress: "192.168.0.9"\n', "--bind-address=10.0.0.1"
                ).node_ip_override == "192.168.0.9"
    assert load(tmp_path, "mode: iptables\n", "--bind-address=10.0.0.1").node_ip_override is None
    assert load(tmp_path, 'bindAddress: "::"\n').node_ip_override is None


def test_flags_with_a_file_field_are_ignored_even_if_the_file_omits_it(tmp_path: Path) -> None:
    # kube-proxy replaces its whole flag-built configuration with the (defaulted) file.
    config = load(
        tmp_path,
        "",
        "--masquerade-all",
        "--kubeconfig=/flag/kubeconfig",
        "--cluster-cidr=10.0.0.0/8",
        "--metrics-bind-address=",
    )
    assert config.masquerade_all is False
    assert config.kubeconfig is None
    assert config.cluster_cidrs == ()
    assert config.metrics_bind_address == "127.0.0.1:10249"
    warnings = [notice.message for notice in config.notices if notice.level == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "ignoring --cluster-cidr, --kubeconfig, --masquerade-all, --metrics-bind-address: "
        "--config is given"
    )


def test_hostname_override_flag_wins_over_the_file(tmp_path: Path) -> None:
    config = load(tmp_path, "hostnameOverride: from-file", "--hostname-override=From-Flag")
    assert config.hostname == "from-flag"
    assert config.notices == ()


def test_empty_hostname_override_flag_leaves_the_file_value(tmp_path: Path) -> None:
    assert load(tmp_path, "hostnameOverride: from-file", "--hostname-override=").hostname == (
        "from-file"
    )


def test_logging_flags_win_over_the_file(tmp_path: Path) -> None:
    config = load(
        tmp_path, "logging: {verbosity: 1, format: json}", "-v", "5", "--logging-format=text"
    )
    assert (config.verbosity, config.logging_format) == (5, LoggingFormat.TEXT)


def test_flags_without_a_file_field_apply_with_a_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "mode: userspace",
        "--master=https://api:6443",
        "--once",
        "--service-proxy-name=kproxy",
        "--iptables-backend=legacy",
        "--userspace-idle-timeout=1m",
        "--from-file=/objects.yaml",
    )
    assert config.master == "https://api:6443"
    assert config.once is True
    assert config.service_proxy_name == "kproxy"
    assert config.iptables_backend.value == "legacy"
    assert config.userspace_idle_timeout == 60.0
    assert config.from_file == "/objects.yaml"
    assert config.notices == ()
