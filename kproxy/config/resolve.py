"""Flags, an optional ``KubeProxyConfiguration`` file and kube-proxy's defaults → ProxyConfig.

Precedence is kube-proxy's: when ``--config`` is given, the file (with v1alpha1 defaulting:
unset or zero values take the default) replaces every flag that has a file field, and those
flags are ignored (kproxy logs which). ``--hostname-override``, ``-v`` and
``--logging-format`` still apply on top of the file, as do flags with no file field
(``--master`` and kproxy's own flags).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NoReturn, TypeVar

from kproxy.config import addresses, values
from kproxy.config.errors import ConfigError
from kproxy.config.fileload import FileSettings, load_config_file
from kproxy.config.flags import (
    GivenFlag,
    GivenFlags,
    add_run_flags,
    flag_spec,
    given_flags,
    normalise_argv,
)
from kproxy.config.govalues import parse_go_bool, parse_go_int
from kproxy.config.record import (
    DEFAULT_CONFIG_SYNC_PERIOD,
    DEFAULT_MASQUERADE_BIT,
    DEFAULT_MIN_SYNC_PERIOD,
    DEFAULT_SYNC_PERIOD,
    DEFAULT_USERSPACE_DRAIN_GRACE,
    DEFAULT_USERSPACE_ENDPOINT_GRACE,
    DEFAULT_USERSPACE_IDLE_TIMEOUT,
    DEFAULT_USERSPACE_MAX_CONNECTIONS,
    DEFAULT_USERSPACE_UDP_IDLE_TIMEOUT,
    HEALTHZ_PORT,
    METRICS_PORT,
    DetectLocalMode,
    IptablesBackend,
    LoggingFormat,
    Notice,
    ProxyConfig,
    ProxyMode,
)

T = TypeVar("T")
R = TypeVar("R")
Hostname = Callable[[], str]

# File fields that change what kproxy does; any other field set in a file is reported once.
EFFECTIVE_FILE_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "mode",
        "clientConnection.kubeconfig",
        "hostnameOverride",
        "bindAddress",
        "healthzBindAddress",
        "metricsBindAddress",
        "bindAddressHardFail",
        "clusterCIDR",
        "detectLocalMode",
        "detectLocal.bridgeInterface",
        "detectLocal.interfaceNamePrefix",
        "iptables.masqueradeAll",
        "iptables.masqueradeBit",
        "iptables.localhostNodePorts",
        "iptables.syncPeriod",
        "iptables.minSyncPeriod",
        "nodePortAddresses",
        "configSyncPeriod",
        "logging.format",
        "logging.verbosity",
        "udpIdleTimeout",
        "portRange",
    }
)


class _RaisingParser(argparse.ArgumentParser):
    """Reports usage errors as ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        unrecognised = "unrecognized arguments: "
        if message.startswith(unrecognised):
            first, *rest = message[len(unrecognised) :].split()
            if first.startswith("-"):
                problem = "unknown flag"
            else:
                problem = "unexpected argument (a boolean flag takes its value as --flag=false)"
            also = f"; also not understood: {' '.join(rest)}" if rest else ""
            raise ConfigError(first, problem + also)
        if message.startswith("argument ") and ": " in message:
            field, _, problem = message[len("argument ") :].partition(": ")
            raise ConfigError(field, problem)
        raise ConfigError("", message)


def parse_run_config(
    argv: Sequence[str], *, gethostname: Hostname = socket.gethostname
) -> ProxyConfig:
    """Parse ``kproxy run``'s arguments (without ``run``) into a validated ProxyConfig.

    Raises ConfigError, naming the flag or config-file field, for anything unusable,
    including unknown flags.
    """
    parser = _RaisingParser(prog="kproxy run", allow_abbrev=False)
    add_run_flags(parser)
    namespace = parser.parse_args(normalise_argv(argv))
    return config_from_args(namespace, gethostname=gethostname)


def config_from_args(
    namespace: argparse.Namespace, *, gethostname: Hostname = socket.gethostname
) -> ProxyConfig:
    """Build the ProxyConfig from a namespace parsed with ``add_run_flags``; reads --config."""
    flags = given_flags(namespace)
    config_flag = flags.get("config")
    settings = load_config_file(config_flag.value) if config_flag and config_flag.value else None
    return resolve_config(flags, settings, gethostname=gethostname)


def resolve_config(
    flags: GivenFlags, settings: FileSettings | None, *, gethostname: Hostname
) -> ProxyConfig:
    """The pure core: combine given flags and file settings, validate, apply defaults."""
    return _Resolver(flags, settings, gethostname).resolve()


@dataclass
class _Resolver:
    flags: GivenFlags
    file: FileSettings | None
    gethostname: Hostname
    notices: list[Notice] = field(default_factory=list)

    def resolve(self) -> ProxyConfig:
        write_config = self.flags.get("write-config-to")
        if write_config is not None:
            raise ConfigError(write_config.option, "is not supported by kproxy")
        self._report_unused_flags()
        if self.file is not None:
            self._check_unused_file_fields(self.file)
        cluster_cidrs = self._cluster_cidrs()
        detect_local_mode, bridge, prefix = self._detect_local(cluster_cidrs)
        sync_period, min_sync_period = self._sync_periods()
        healthz, metrics = self._listen_addresses()
        return ProxyConfig(
            hostname=self._hostname(),
            proxy_mode=self._proxy_mode(),
            kubeconfig=self._kubeconfig(),
            master=self._optional_text("master"),
            config_file=self.file.path if self.file else None,
            cluster_cidrs=cluster_cidrs,
            detect_local_mode=detect_local_mode,
            pod_bridge_interface=bridge,
            pod_interface_name_prefix=prefix,
            masquerade_all=self._masquerade_all(),
            masquerade_bit=self._masquerade_bit(),
            nodeport_addresses=self._nodeport_addresses(),
            localhost_nodeports=self._localhost_nodeports(),
            sync_period=sync_period,
            min_sync_period=min_sync_period,
            config_sync_period=self._config_sync_period(),
            healthz_bind_address=healthz,
            metrics_bind_address=metrics,
            bind_address_hard_fail=self._bind_address_hard_fail(),
            bind_address=self._bind_address(),
            verbosity=self._verbosity(),
            logging_format=self._logging_format(),
            from_file=self._optional_text("from-file"),
            once=self._flag_bool("once", default=False),
            service_proxy_name=self._flag("service-proxy-name", values.parse_label_value, ""),
            iptables_backend=self._flag(
                "iptables-backend", values.parse_iptables_backend, IptablesBackend.AUTO
            ),
            userspace_idle_timeout=self._flag(
                "userspace-idle-timeout",
                values.parse_positive_duration,
                DEFAULT_USERSPACE_IDLE_TIMEOUT,
            ),
            userspace_udp_idle_timeout=self._userspace_udp_idle_timeout(),
            userspace_port_range=self._port_range(),
            userspace_endpoint_grace=self._flag(
                "userspace-endpoint-grace",
                values.parse_positive_duration,
                DEFAULT_USERSPACE_ENDPOINT_GRACE,
            ),
            userspace_drain_grace=self._flag(
                "userspace-drain-grace",
                values.parse_positive_duration,
                DEFAULT_USERSPACE_DRAIN_GRACE,
            ),
            userspace_max_connections=self._flag(
                "userspace-max-connections",
                values.parse_positive_count,
                DEFAULT_USERSPACE_MAX_CONNECTIONS,
            ),
            cleanup_and_exit=self._flag_bool("cleanup", default=False),
            init_only=self._flag_bool("init-only", default=False),
            notices=tuple(self.notices),
        )

    # -- reading flags -------------------------------------------------------------------

    def _given(self, name: str) -> GivenFlag | None:
        """A flag's value, unless kube-proxy would ignore it because a file was given."""
        if self.file is not None and flag_spec(name).in_config_file:
            return None
        return self.flags.get(name)

    def _flag(self, name: str, parse: Callable[[str], T], default: T) -> T:
        given = self._given(name)
        return default if given is None else _convert(given.option, None, parse, given.value)

    def _flag_bool(self, name: str, *, default: bool) -> bool:
        return self._flag(name, parse_go_bool, default)

    def _optional_text(self, name: str) -> str | None:
        given = self._given(name)
        return given.value if given is not None and given.value else None

    def _in_file(self, path: str, check: Callable[[T], object], value: T) -> None:
        assert self.file is not None
        _convert(path, self.file.path, check, value)

    # -- notices -------------------------------------------------------------------------

    def _report_unused_flags(self) -> None:
        for option in self.flags.compatibility_only:
            self.notices.append(
                Notice.warning(
                    f"flag {option} is accepted for compatibility with kube-proxy and has no "
                    "effect in kproxy"
                )
            )
        if self.file is None:
            return
        ignored = [
            given.option
            for name, given in self.flags.values.items()
            if flag_spec(name).in_config_file
        ]
        if ignored:
            self.notices.append(
                Notice.warning(
                    f"ignoring {', '.join(sorted(ignored))}: --config is given and, as in "
                    f"kube-proxy, {self.file.path} replaces these flags"
                )
            )

    def _check_unused_file_fields(self, settings: FileSettings) -> None:
        # kube-proxy refuses these values; kproxy does not use the fields but keeps the
        # same contract so a file that works here also works there.
        limits = {
            "oomScoreAdj": (-1000, 1000),
            "conntrack.maxPerCore": (0, None),
            "conntrack.min": (0, None),
            "clientConnection.burst": (0, None),
        }
        for path, (low, high) in limits.items():
            number = settings.integer(path)
            if number is not None and (number < low or (high is not None and number > high)):
                bound = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise settings.error(path, f"must be {bound}, got {number}")
        for path in (
            "conntrack.tcpEstablishedTimeout",
            "conntrack.tcpCloseWaitTimeout",
            "conntrack.udpTimeout",
            "conntrack.udpStreamTimeout",
        ):
            nanoseconds = settings.nanoseconds(path)
            if nanoseconds is not None:
                self._in_file(path, values.check_non_negative_duration, nanoseconds)
        unused = [
            path
            for path, value in settings.values.items()
            if path not in EFFECTIVE_FILE_FIELDS and value not in (None, "", "0", 0, False, (), {})
        ]
        if unused:
            self.notices.append(
                Notice.info(
                    f"config {settings.path}: these fields are accepted for compatibility "
                    f"and have no effect in kproxy: {', '.join(sorted(unused))}"
                )
            )

    # -- fields --------------------------------------------------------------------------

    def _hostname(self) -> str:
        # kube-proxy: a non-empty --hostname-override wins over the file.
        given = self.flags.get("hostname-override")
        if given is not None and given.value:
            return _convert(given.option, None, _node_name, given.value)
        override = self.file.string("hostnameOverride") if self.file else None
        if self.file is not None and override:
            return _convert("hostnameOverride", self.file.path, _node_name, override)
        try:
            return _node_name(self.gethostname())
        except ValueError:
            raise ConfigError(
                "--hostname-override", "the OS hostname is empty; set --hostname-override"
            ) from None

    def _proxy_mode(self) -> ProxyMode:
        if self.file is not None:
            text = self.file.string("mode") or ""
            return _convert("mode", self.file.path, values.parse_proxy_mode, text)
        return self._flag("proxy-mode", values.parse_proxy_mode, ProxyMode.IPTABLES)

    def _kubeconfig(self) -> str | None:
        if self.file is not None:
            return self.file.string("clientConnection.kubeconfig") or None
        return self._optional_text("kubeconfig")

    def _cluster_cidrs(self) -> tuple[str, ...]:
        if self.file is not None:
            text = self.file.string("clusterCIDR") or ""
            items = [item.strip() for item in text.split(",")] if text else []
            return _convert("clusterCIDR", self.file.path, addresses.parse_cluster_cidrs, items)
        given = self._given("cluster-cidr")
        if given is None or not given.value:
            return ()
        items = [item.strip() for item in given.value.split(",")]
        return _convert(given.option, None, addresses.parse_cluster_cidrs, items)

    def _detect_local(
        self, cluster_cidrs: tuple[str, ...]
    ) -> tuple[DetectLocalMode | None, str | None, str | None]:
        mode_input = self._text_input("detectLocalMode", "detect-local-mode")
        mode = mode_input.convert(values.parse_detect_local_mode)
        if mode is DetectLocalMode.BRIDGE_INTERFACE:
            bridge = self._text_input("detectLocal.bridgeInterface", "pod-bridge-interface")
            return mode, bridge.convert(_required_interface(mode)), None
        if mode is DetectLocalMode.INTERFACE_NAME_PREFIX:
            prefix = self._text_input(
                "detectLocal.interfaceNamePrefix", "pod-interface-name-prefix"
            )
            return mode, None, prefix.convert(_required_interface(mode))
        if mode is DetectLocalMode.CLUSTER_CIDR and not cluster_cidrs:
            if mode_input.text:
                self.notices.append(
                    Notice.info(
                        "detect-local mode ClusterCIDR without a cluster CIDR: traffic from "
                        "local pods is not told apart (set --cluster-cidr or clusterCIDR)"
                    )
                )
            return None, None, None
        return mode, None, None

    def _text_input(self, file_field: str, flag_name: str) -> _Input:
        if self.file is not None:
            return _Input(self.file.string(file_field) or "", file_field, self.file.path)
        given = self._given(flag_name)
        if given is None:
            return _Input("", f"--{flag_name}", None)
        return _Input(given.value, given.option, None)

    def _masquerade_all(self) -> bool:
        if self.file is not None:
            return bool(self.file.boolean("iptables.masqueradeAll"))
        return self._flag_bool("masquerade-all", default=False)

    def _masquerade_bit(self) -> int:
        if self.file is not None:
            bit = self.file.integer("iptables.masqueradeBit")
            if bit is None:
                return DEFAULT_MASQUERADE_BIT
            return _convert(
                "iptables.masqueradeBit", self.file.path, values.parse_masquerade_bit, bit
            )
        given = self._given("iptables-masquerade-bit")
        if given is None:
            return DEFAULT_MASQUERADE_BIT
        return _convert(given.option, None, _masquerade_bit_text, given.value)

    def _localhost_nodeports(self) -> bool:
        if self.file is not None:
            enabled = self.file.boolean("iptables.localhostNodePorts")
            return True if enabled is None else enabled
        return self._flag_bool("iptables-localhost-nodeports", default=True)

    def _nodeport_addresses(self) -> tuple[str, ...]:
        if self.file is not None:
            items = self.file.strings("nodePortAddresses") or ()
            return _convert(
                "nodePortAddresses", self.file.path, addresses.parse_nodeport_addresses, items
            )
        given = self._given("nodeport-addresses")
        if given is None:
            return ()
        return _convert(given.option, None, addresses.parse_nodeport_addresses, given.items)

    def _sync_periods(self) -> tuple[float, float]:
        if self.file is not None:
            sync = self._file_duration("iptables.syncPeriod", DEFAULT_SYNC_PERIOD, positive=True)
            minimum = self._file_duration(
                "iptables.minSyncPeriod", DEFAULT_MIN_SYNC_PERIOD, positive=False
            )
            sync_field, min_field = "iptables.syncPeriod", "iptables.minSyncPeriod"
        else:
            sync = self._flag(
                "iptables-sync-period", values.parse_positive_duration, DEFAULT_SYNC_PERIOD
            )
            minimum = self._flag(
                "iptables-min-sync-period",
                values.parse_non_negative_duration,
                DEFAULT_MIN_SYNC_PERIOD,
            )
            sync_field, min_field = "--iptables-sync-period", "--iptables-min-sync-period"
        if minimum > sync:
            raise ConfigError(
                sync_field,
                f"must be at least {min_field} ({minimum:g}s), got {sync:g}s",
                source=self.file.path if self.file else None,
            )
        return sync, minimum

    def _file_duration(self, path: str, default: float, *, positive: bool) -> float:
        """v1alpha1 defaulting: an unset or zero duration takes the default."""
        assert self.file is not None
        nanoseconds = self.file.nanoseconds(path)
        if not nanoseconds:
            return default
        check = values.check_positive_duration if positive else values.check_non_negative_duration
        return _convert(path, self.file.path, check, nanoseconds)

    def _config_sync_period(self) -> float:
        if self.file is not None:
            return self._file_duration(
                "configSyncPeriod", DEFAULT_CONFIG_SYNC_PERIOD, positive=True
            )
        return self._flag(
            "config-sync-period", values.parse_positive_duration, DEFAULT_CONFIG_SYNC_PERIOD
        )

    def _listen_addresses(self) -> tuple[str, str]:
        if self.file is not None:
            return self._file_listen_addresses(self.file)
        return (
            self._flag_listen_address("healthz", "0.0.0.0", HEALTHZ_PORT),
            self._flag_listen_address("metrics", "127.0.0.1", METRICS_PORT),
        )

    def _flag_listen_address(self, server: str, default_ip: str, default_port: int) -> str:
        # kube-proxy's deprecated --*-port flags: 0 disables the server, any other port is
        # used when the bind address is a bare IP.
        port = self._flag(f"{server}-port", _port_text, default_port)
        address = self._flag(f"{server}-bind-address", str, f"{default_ip}:{default_port}")
        if port == 0 or address == "":
            return ""
        given = self._given(f"{server}-bind-address")
        option = given.option if given is not None else f"--{server}-bind-address"
        return _convert(
            option, None, partial(addresses.parse_listen_address, default_port=port), address
        )

    def _file_listen_addresses(self, settings: FileSettings) -> tuple[str, str]:
        bind_address = settings.string("bindAddress") or "0.0.0.0"
        bind_ip = _convert("bindAddress", settings.path, addresses.parse_ip, bind_address)
        # v1alpha1 defaulting follows the family of bindAddress.
        healthz_ip, metrics_ip = ("[::]", "[::1]") if ":" in bind_ip else ("0.0.0.0", "127.0.0.1")
        result = []
        for path, default_ip, port in (
            ("healthzBindAddress", healthz_ip, HEALTHZ_PORT),
            ("metricsBindAddress", metrics_ip, METRICS_PORT),
        ):
            text = settings.string(path) or f"{default_ip}:{port}"
            result.append(
                _convert(
                    path,
                    settings.path,
                    partial(addresses.parse_listen_address, default_port=port),
                    text,
                )
            )
        return result[0], result[1]

    def _bind_address(self) -> str:
        """kube-proxy's bindAddress: from the file when there is one (the flag is then
        ignored, as kube-proxy ignores it), else from --bind-address."""
        if self.file is not None:
            text = self.file.string("bindAddress") or "0.0.0.0"
            return _convert("bindAddress", self.file.path, addresses.parse_ip, text)
        return self._flag("bind-address", addresses.parse_ip, "0.0.0.0")

    def _bind_address_hard_fail(self) -> bool:
        if self.file is not None:
            return bool(self.file.boolean("bindAddressHardFail"))
        return self._flag_bool("bind-address-hard-fail", default=False)

    def _verbosity(self) -> int:
        given = self.flags.get("v")
        if given is not None:
            return _convert(given.option, None, values.parse_verbosity, given.value)
        if self.file is not None:
            return self.file.integer("logging.verbosity") or 0
        return 0

    def _logging_format(self) -> LoggingFormat:
        given = self.flags.get("logging-format")
        if given is not None:
            return _convert(given.option, None, values.parse_logging_format, given.value)
        if self.file is not None:
            text = self.file.string("logging.format") or ""
            return _convert("logging.format", self.file.path, values.parse_logging_format, text)
        return LoggingFormat.TEXT

    def _userspace_udp_idle_timeout(self) -> float:
        if self.file is not None:
            return self._file_duration(
                "udpIdleTimeout", DEFAULT_USERSPACE_UDP_IDLE_TIMEOUT, positive=True
            )
        return self._flag(
            "userspace-udp-idle-timeout",
            values.parse_positive_duration,
            DEFAULT_USERSPACE_UDP_IDLE_TIMEOUT,
        )

    def _port_range(self) -> tuple[int, int] | None:
        if self.file is not None:
            text = self.file.string("portRange") or ""
            return _convert("portRange", self.file.path, values.parse_port_range, text)
        return self._flag("proxy-port-range", values.parse_port_range, None)


@dataclass(frozen=True, slots=True)
class _Input:
    """A text value and where it came from, so a conversion error can name it."""

    text: str
    field: str
    source: str | None

    def convert(self, parse: Callable[[str], R]) -> R:
        return _convert(self.field, self.source, parse, self.text)


def _convert(field: str, source: str | None, parse: Callable[[T], R], value: T) -> R:
    try:
        return parse(value)
    except ValueError as error:
        raise ConfigError(field, str(error), source=source) from None


def _node_name(text: str) -> str:
    """As kube-proxy's GetHostname: surrounding blanks dropped, lower-cased, never empty."""
    name = text.strip()
    if not name:
        raise ValueError("must not be blank")
    return name.lower()


def _required_interface(mode: DetectLocalMode) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            raise ValueError(f"must be set when the detect-local mode is {mode}")
        return values.parse_interface_name(text)

    return parse


def _masquerade_bit_text(text: str) -> int:
    try:
        bit = parse_go_int(text)
    except ValueError:
        raise ValueError(f"must be an integer between 0 and 31, got {text!r}") from None
    return values.parse_masquerade_bit(bit)


def _port_text(text: str) -> int:
    try:
        port = parse_go_int(text)
    except ValueError:
        raise ValueError(f"must be a port between 0 and 65535, got {text!r}") from None
    return values.parse_port(port)
