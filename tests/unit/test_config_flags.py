"""Every ``kproxy run`` flag: defaults, accepted values, and errors that name the flag."""

from __future__ import annotations

import logging

import pytest

from kproxy.config import (
    ConfigError,
    DetectLocalMode,
    IptablesBackend,
    LoggingFormat,
    ProxyConfig,
    ProxyMode,
    normalise_argv,
    parse_run_config,
)
from kproxy.config.flags import COMPATIBILITY_FLAGS


def parse(*argv: str) -> ProxyConfig:
    return parse_run_config(list(argv), gethostname=lambda: "Test-Host")


def test_defaults_match_kube_proxy() -> None:
    config = parse()
    assert config == ProxyConfig(hostname="test-host")
    assert config.proxy_mode is ProxyMode.IPTABLES
    assert config.kubeconfig is None
    assert config.master is None
    assert config.config_file is None
    assert config.cluster_cidrs == ()
    # kube-proxy defaults to ClusterCIDR, which without a cluster CIDR detects nothing.
    assert config.detect_local_mode is None
    assert config.masquerade_all is False
    assert config.masquerade_bit == 14
    assert config.nodeport_addresses == ()
    assert config.localhost_nodeports is True
    assert config.sync_period == 30.0
    assert config.min_sync_period == 1.0
    assert config.config_sync_period == 900.0
    assert config.healthz_bind_address == "0.0.0.0:10256"
    assert config.metrics_bind_address == "127.0.0.1:10249"
    assert config.verbosity == 0
    assert config.logging_format is LoggingFormat.TEXT
    assert config.from_file is None
    assert config.once is False
    assert config.service_proxy_name == ""
    assert config.iptables_backend is IptablesBackend.AUTO
    assert config.userspace_idle_timeout == 900.0
    assert config.userspace_udp_idle_timeout == 0.25
    assert config.userspace_port_range is None
    assert config.cleanup_and_exit is False
    assert config.init_only is False
    assert config.notices == ()


GO_TRUE = ["1", "t", "T", "TRUE", "true", "True"]
GO_FALSE = ["0", "f", "F", "FALSE", "false", "False"]


@pytest.mark.parametrize(
    ("argv", "attribute", "expected"),
    [
        (["--proxy-mode=userspace"], "proxy_mode", ProxyMode.USERSPACE),
        (["--proxy-mode", "iptables"], "proxy_mode", ProxyMode.IPTABLES),
        (["--proxy-mode="], "proxy_mode", ProxyMode.IPTABLES),
        (["--kubeconfig", "/etc/kp/kubeconfig"], "kubeconfig", "/etc/kp/kubeconfig"),
        (["--kubeconfig="], "kubeconfig", None),
        (["--master=https://10.0.0.1:6443"], "master", "https://10.0.0.1:6443"),
        (["--master", ""], "master", None),
        (["--hostname-override", " Node-1 "], "hostname", "node-1"),
        (["--hostname-override="], "hostname", "test-host"),
        (["--cluster-cidr=10.244.0.0/16"], "cluster_cidrs", ("10.244.0.0/16",)),
        (["--cluster-cidr=10.244.1.7/16"], "cluster_cidrs", ("10.244.0.0/16",)),
        (
            ["--cluster-cidr", "10.244.0.0/16,fd00:10:244:0::/56"],
            "cluster_cidrs",
            ("10.244.0.0/16", "fd00:10:244::/56"),
        ),
        (["--cluster-cidr="], "cluster_cidrs", ()),
        (["--cluster-cidr=10.244.0.0/16"], "detect_local_mode", DetectLocalMode.CLUSTER_CIDR),
        (["--detect-local-mode=NodeCIDR"], "detect_local_mode", DetectLocalMode.NODE_CIDR),
        (["--detect-local-mode=ClusterCIDR"], "detect_local_mode", None),
        (
            ["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"],
            "pod_bridge_interface",
            "cbr0",
        ),
        (
            ["--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"],
            "pod_interface_name_prefix",
            "veth",
        ),
        # The interface flags only mean something with their mode.
        (["--pod-bridge-interface=cbr0"], "pod_bridge_interface", None),
        (["--masquerade-all"], "masquerade_all", True),
        (["--masquerade_all"], "masquerade_all", True),
        *((["--masquerade-all=" + text], "masquerade_all", True) for text in GO_TRUE),
        *((["--masquerade-all=" + text], "masquerade_all", False) for text in GO_FALSE),
        (["--iptables-masquerade-bit=0"], "masquerade_bit", 0),
        (["--iptables-masquerade-bit", "31"], "masquerade_bit", 31),
        (["--iptables-masquerade-bit=0x1f"], "masquerade_bit", 31),
        (["--nodeport-addresses=10.0.0.1/8"], "nodeport_addresses", ("10.0.0.0/8",)),
        (["--nodeport-addresses=primary"], "nodeport_addresses", ("primary",)),
        (
            ["--nodeport-addresses=10.0.0.0/8,192.168.0.0/16", "--nodeport-addresses=fd00::/64"],
            "nodeport_addresses",
            ("10.0.0.0/8", "192.168.0.0/16", "fd00::/64"),
        ),
        (["--nodeport-addresses="], "nodeport_addresses", ()),
        (["--iptables-localhost-nodeports=false"], "localhost_nodeports", False),
        (["--iptables-localhost-nodeports"], "localhost_nodeports", True),
        (["--iptables-sync-period=1m0s"], "sync_period", 60.0),
        (["--iptables-sync-period", "1h2m3.5s"], "sync_period", 3723.5),
        (["--iptables-min-sync-period=500ms"], "min_sync_period", 0.5),
        (["--iptables-min-sync-period=0"], "min_sync_period", 0.0),
        (["--bind-address=192.168.0.9"], "bind_address", "192.168.0.9"),
        (["--bind-address=fd00:0::9"], "bind_address", "fd00::9"),
        (["--bind-address=::"], "node_ip_override", None),
        (["--bind-address=10.1.1.1"], "node_ip_override", "10.1.1.1"),
        ([], "node_ip_override", None),
        (["--config-sync-period=5m"], "config_sync_period", 300.0),
        (["--healthz-bind-address=127.0.0.1:9999"], "healthz_bind_address", "127.0.0.1:9999"),
        (["--healthz-bind-address=::1"], "healthz_bind_address", "[::1]:10256"),
        (["--healthz-bind-address=[::]:80"], "healthz_bind_address", "[::]:80"),
        (["--healthz-bind-address="], "healthz_bind_address", ""),
        (["--healthz-port=0"], "healthz_bind_address", ""),
        # The deprecated port flag only fills in the port of a bare IP, as in kube-proxy.
        (["--healthz-port=1234"], "healthz_bind_address", "0.0.0.0:10256"),
        (
            ["--healthz-bind-address=10.0.0.1", "--healthz-port=1234"],
            "healthz_bind_address",
            "10.0.0.1:1234",
        ),
        (["--metrics-bind-address=0.0.0.0:10249"], "metrics_bind_address", "0.0.0.0:10249"),
        (["--metrics-bind-address", ""], "metrics_bind_address", ""),
        (["--metrics-port=0"], "metrics_bind_address", ""),
        (["-v", "4"], "verbosity", 4),
        (["-v=4"], "verbosity", 4),
        (["-v4"], "verbosity", 4),
        (["--v=4"], "verbosity", 4),
        (["--v", "4"], "verbosity", 4),
        (["--logging-format=json"], "logging_format", LoggingFormat.JSON),
        (["--logging-format", "text"], "logging_format", LoggingFormat.TEXT),
        (["--from-file", "/tmp/objects.yaml"], "from_file", "/tmp/objects.yaml"),
        (["--once"], "once", True),
        (["--once=false"], "once", False),
        (["--service-proxy-name=kproxy"], "service_proxy_name", "kproxy"),
        (["--iptables-backend=nft"], "iptables_backend", IptablesBackend.NFT),
        (["--iptables-backend=legacy"], "iptables_backend", IptablesBackend.LEGACY),
        (["--iptables-backend=libiptc"], "iptables_backend", IptablesBackend.LIBIPTC),
        (["--userspace-idle-timeout=30s"], "userspace_idle_timeout", 30.0),
        (["--userspace-udp-idle-timeout=2s"], "userspace_udp_idle_timeout", 2.0),
        (["--udp-timeout=100ms"], "userspace_udp_idle_timeout", 0.1),
        (["--proxy-port-range=30000-30010"], "userspace_port_range", (30000, 30010)),
        (["--proxy-port-range=30000+10"], "userspace_port_range", (30000, 30010)),
        (["--proxy-port-range=30000"], "userspace_port_range", (30000, 30000)),
        (["--proxy-port-range=0-0"], "userspace_port_range", None),
        (["--cleanup"], "cleanup_and_exit", True),
        (["--init-only=true"], "init_only", True),
        (["--config="], "config_file", None),
        # pflag: the last occurrence of a scalar flag wins.
        (["--proxy-mode=userspace", "--proxy-mode=iptables"], "proxy_mode", ProxyMode.IPTABLES),
        # A valued flag takes the next argument even when it starts with a dash.
        (["--iptables-min-sync-period", "-0s"], "min_sync_period", 0.0),
    ],
)
def test_flag_values(argv: list[str], attribute: str, expected: object) -> None:
    assert getattr(parse(*argv), attribute) == expected


INVALID_FLAGS: list[tuple[list[str], str, str]] = [
    (["--proxy-mode=ipvs"], "--proxy-mode", "iptables and userspace modes, not 'ipvs'"),
    (["--proxy-mode=IPTABLES"], "--proxy-mode", "must be iptables or userspace"),
    (["--cluster-cidr=10.0.0.0/33"], "--cluster-cidr", "must be a CIDR"),
    (["--cluster-cidr=10.0.0.0"], "--cluster-cidr", "must be a CIDR"),
    (["--cluster-cidr=10.0.0.0/8,11.0.0.0/8"], "--cluster-cidr", "one IPv4 and one IPv6"),
    (
        ["--cluster-cidr=10.0.0.0/8,fd00::/64,11.0.0.0/8"],
        "--cluster-cidr",
        "one CIDR or a dual-stack pair",
    ),
    (["--detect-local-mode=clustercidr"], "--detect-local-mode", "must be ClusterCIDR"),
    (
        ["--detect-local-mode=BridgeInterface"],
        "--pod-bridge-interface",
        "must be set when the detect-local mode is BridgeInterface",
    ),
    (
        ["--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix="],
        "--pod-interface-name-prefix",
        "must be set when the detect-local mode is InterfaceNamePrefix",
    ),
    (
        ["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0 -j ACCEPT"],
        "--pod-bridge-interface",
        "network interface name",
    ),
    (
        ["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=much-too-long-name"],
        "--pod-bridge-interface",
        "1 to 15 characters",
    ),
    (["--masquerade-all=yes"], "--masquerade-all", "must be true or false, got 'yes'"),
    (["--masquerade-all="], "--masquerade-all", "must be true or false"),
    (["--masquerade-all", "false"], "false", "unexpected argument"),
    (["--iptables-masquerade-bit=32"], "--iptables-masquerade-bit", "between 0 and 31, got 32"),
    (["--iptables-masquerade-bit=-1"], "--iptables-masquerade-bit", "between 0 and 31"),
    (["--iptables-masquerade-bit=abc"], "--iptables-masquerade-bit", "between 0 and 31"),
    (["--nodeport-addresses=10.0.0.0"], "--nodeport-addresses", "must be a CIDR"),
    (["--nodeport-addresses=primary,10.0.0.0/8"], "--nodeport-addresses", "cannot be combined"),
    (["--iptables-localhost-nodeports=nope"], "--iptables-localhost-nodeports", "true or false"),
    (["--iptables-sync-period=0"], "--iptables-sync-period", "must be greater than 0"),
    (["--iptables-sync-period=30"], "--iptables-sync-period", "must be a duration"),
    (["--iptables-sync-period=-1s"], "--iptables-sync-period", "must be greater than 0"),
    (["--iptables-min-sync-period=-1s"], "--iptables-min-sync-period", "must not be negative"),
    (
        ["--iptables-min-sync-period=1m"],
        "--iptables-sync-period",
        "must be at least --iptables-min-sync-period",
    ),
    (["--config-sync-period=0s"], "--config-sync-period", "must be greater than 0"),
    (["--healthz-bind-address=localhost:10256"], "--healthz-bind-address", "IP address"),
    (["--bind-address=node-a"], "--bind-address", "IP address"),
    (["--healthz-bind-address=:10256"], "--healthz-bind-address", "IP address"),
    (["--healthz-bind-address=1.2.3.4:0"], "--healthz-bind-address", "port must be"),
    (["--healthz-bind-address=1.2.3.4:99999"], "--healthz-bind-address", "port must be"),
    (["--healthz-bind-address=[::1]"], "--healthz-bind-address", "must be IP:port"),
    (["--metrics-bind-address=metrics"], "--metrics-bind-address", "must be IP:port"),
    (["--healthz-port=70000"], "--healthz-port", "between 0 and 65535"),
    (["--metrics-port=x"], "--metrics-port", "between 0 and 65535"),
    (["-v=-1"], "--v", "non-negative integer"),
    (["-v", "loud"], "--v", "non-negative integer"),
    (["-v"], "-v/--v", "expected one argument"),
    (["--logging-format=xml"], "--logging-format", "must be text or json"),
    (["--service-proxy-name=not a label!"], "--service-proxy-name", "label value"),
    (["--iptables-backend=nftables"], "--iptables-backend", "auto, nft, legacy or libiptc"),
    (["--userspace-idle-timeout=0s"], "--userspace-idle-timeout", "greater than 0"),
    (["--udp-timeout=0"], "--udp-timeout", "greater than 0"),
    (["--userspace-udp-idle-timeout=1"], "--userspace-udp-idle-timeout", "must be a duration"),
    (["--proxy-port-range=10-5"], "--proxy-port-range", "low end first"),
    (["--proxy-port-range=0-70000"], "--proxy-port-range", "between 1 and 65535"),
    (["--proxy-port-range=ports"], "--proxy-port-range", "must be a port range"),
    (["--hostname-override=   "], "--hostname-override", "must not be blank"),
    (["--write-config-to=/tmp/x"], "--write-config-to", "not supported"),
    (["--bogus"], "--bogus", "unknown flag"),
    (["--bogus=1", "--other"], "--bogus=1", "also not understood: --other"),
    (["--masq"], "--masq", "unknown flag"),  # no abbreviations, as in pflag
    (["-x"], "-x", "unknown flag"),
    (["--once", "extra"], "extra", "unexpected argument"),
]


@pytest.mark.parametrize(("argv", "field", "fragment"), INVALID_FLAGS)
def test_invalid_flags_name_the_flag(argv: list[str], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(*argv)
    assert raised.value.field == field
    assert fragment in raised.value.message
    assert str(raised.value).startswith(f"{field}: ")


def test_message_for_an_out_of_range_masquerade_bit() -> None:
    with pytest.raises(ConfigError) as raised:
        parse("--iptables-masquerade-bit=40")
    assert str(raised.value) == (
        "--iptables-masquerade-bit: must be an integer between 0 and 31, got 40"
    )


def test_hostname_comes_from_the_os_lower_cased() -> None:
    config = parse_run_config([], gethostname=lambda: " Worker-7.Example.COM\n")
    assert config.hostname == "worker-7.example.com"


def test_blank_os_hostname_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_run_config([], gethostname=lambda: "  ")
    assert raised.value.field == "--hostname-override"


def test_hostname_override_skips_the_os_hostname() -> None:
    def no_hostname() -> str:
        raise AssertionError("not consulted")

    assert parse_run_config(["--hostname-override=n1"], gethostname=no_hostname).hostname == "n1"


def test_explicit_cluster_cidr_mode_without_cidr_is_reported() -> None:
    config = parse("--detect-local-mode=ClusterCIDR")
    assert config.detect_local_mode is None
    assert [notice.level for notice in config.notices] == [logging.INFO]
    assert "without a cluster CIDR" in config.notices[0].message


def _compatibility_argv(name: str) -> list[str]:
    return [f"--{name}"] if COMPATIBILITY_FLAGS[name] else [f"--{name}", "1"]


@pytest.mark.parametrize("name", sorted(COMPATIBILITY_FLAGS))
def test_compatibility_flags_are_accepted_with_one_warning(name: str) -> None:
    config = parse(*_compatibility_argv(name), *_compatibility_argv(name))
    assert config == ProxyConfig(hostname="test-host")
    assert [(notice.level, notice.message) for notice in config.notices] == [
        (
            logging.WARNING,
            f"flag --{name} is accepted for compatibility with kube-proxy and has no effect "
            "in kproxy",
        )
    ]


def test_compatibility_bool_flags_take_no_separate_value() -> None:
    with pytest.raises(ConfigError) as raised:
        parse("--profiling", "true")
    assert raised.value.field == "true"


def test_a_classic_kube_proxy_command_line() -> None:
    config = parse(
        "--bind-address=10.12.51.171",
        "--hostname-override=10.12.51.171",
        "--cluster-cidr=10.254.0.0/16",
        "--kubeconfig=/etc/kubernetes/kube-proxy.kubeconfig",
        "--logtostderr=true",
        "--v=2",
        "--proxy-mode=iptables",
        "--conntrack-max-per-core=0",
        "--oom-score-adj=-999",
        "--feature-gates=SomeGate=true,Other=false",
        "--ipvs-min-sync-period",
        "5s",
    )
    assert config.hostname == "10.12.51.171"
    assert config.cluster_cidrs == ("10.254.0.0/16",)
    assert config.detect_local_mode is DetectLocalMode.CLUSTER_CIDR
    assert config.kubeconfig == "/etc/kubernetes/kube-proxy.kubeconfig"
    assert config.verbosity == 2
    assert config.node_ip_override == "10.12.51.171"  # --bind-address: the node's IPv4 IP
    warned = sorted(notice.message.split()[1] for notice in config.notices)
    assert warned == [
        "--conntrack-max-per-core",
        "--feature-gates",
        "--ipvs-min-sync-period",
        "--logtostderr",
        "--oom-score-adj",
    ]


@pytest.mark.parametrize(
    ("argv", "normalised"),
    [
        (["--masquerade-all"], ["--masquerade-all=true"]),
        (["--masquerade-all=F"], ["--masquerade-all=F"]),
        (["--masquerade-all", "false"], ["--masquerade-all=true", "false"]),
        (["--proxy-mode", "userspace"], ["--proxy-mode=userspace"]),
        (["--oom-score-adj", "-999"], ["--oom-score-adj=-999"]),
        (["--log_dir", "/var/log"], ["--log-dir=/var/log"]),
        (["--profiling"], ["--profiling=true"]),
        (["-v", "3"], ["--v=3"]),
        (["-v3"], ["--v=3"]),
        (["-v=3"], ["--v=3"]),
        (["-v"], ["--v"]),
        (["--proxy-mode"], ["--proxy-mode"]),
        (["--unknown", "x"], ["--unknown", "x"]),
        (["--", "--masquerade-all"], ["--", "--masquerade-all"]),
        (["-h"], ["-h"]),
    ],
)
def test_normalise_argv(argv: list[str], normalised: list[str]) -> None:
    assert normalise_argv(argv) == normalised
