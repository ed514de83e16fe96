"""``ProxyConfig``: everything ``kproxy run`` was told, resolved, validated and defaulted."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field


class ProxyMode(enum.StrEnum):
    IPTABLES = "iptables"
    USERSPACE = "userspace"


class DetectLocalMode(enum.StrEnum):
    """How to tell traffic from this node's pods apart from other traffic (kube-proxy's names)."""

    CLUSTER_CIDR = "ClusterCIDR"
    NODE_CIDR = "NodeCIDR"
    BRIDGE_INTERFACE = "BridgeInterface"
    INTERFACE_NAME_PREFIX = "InterfaceNamePrefix"


class IptablesBackend(enum.StrEnum):
    AUTO = "auto"
    NFT = "nft"
    LEGACY = "legacy"
    LIBIPTC = "libiptc"


class LoggingFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


# kube-proxy's defaults (v1alpha1 defaulting and its flag defaults).
DEFAULT_MASQUERADE_BIT = 14
DEFAULT_SYNC_PERIOD = 30.0
DEFAULT_MIN_SYNC_PERIOD = 1.0
DEFAULT_CONFIG_SYNC_PERIOD = 15 * 60.0
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
DEFAULT_HEALTHZ_BIND_ADDRESS = f"0.0.0.0:{HEALTHZ_PORT}"
DEFAULT_METRICS_BIND_ADDRESS = f"127.0.0.1:{METRICS_PORT}"
# The old userspace proxier's --udp-timeout default; TCP had no idle timeout there.
DEFAULT_USERSPACE_UDP_IDLE_TIMEOUT = 0.25
DEFAULT_USERSPACE_IDLE_TIMEOUT = 15 * 60.0
DEFAULT_USERSPACE_ENDPOINT_GRACE = 30.0
DEFAULT_USERSPACE_DRAIN_GRACE = 5.0
DEFAULT_USERSPACE_MAX_CONNECTIONS = 100_000


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth one log line once logging is set up (parsing itself does not log)."""

    level: int
    message: str

    @classmethod
    def warning(cls, message: str) -> Notice:
        return cls(logging.WARNING, message)

    @classmethod
    def info(cls, message: str) -> Notice:
        return cls(logging.INFO, message)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The node's proxy configuration. Durations are in seconds.

    Defaults are kube-proxy's, so a record built in a test with only ``hostname`` behaves like
    ``kube-proxy`` started without flags.
    """

    hostname: str  # the Node's name: --hostname-override, else the OS hostname; lower-cased
    proxy_mode: ProxyMode = ProxyMode.IPTABLES
    kubeconfig: str | None = None
    master: str | None = None  # overrides the kubeconfig's server
    config_file: str | None = None  # the KubeProxyConfiguration file read, if any
    cluster_cidrs: tuple[str, ...] = ()  # normalised; at most one per family
    detect_local_mode: DetectLocalMode | None = None  # None: no local-traffic detection
    pod_bridge_interface: str | None = None  # set iff detect_local_mode is BRIDGE_INTERFACE
    pod_interface_name_prefix: str | None = None  # set iff INTERFACE_NAME_PREFIX
    masquerade_all: bool = False
    masquerade_bit: int = DEFAULT_MASQUERADE_BIT
    nodeport_addresses: tuple[str, ...] = ()  # normalised CIDRs, or ("primary",); () = all IPs
    localhost_nodeports: bool = True
    sync_period: float = DEFAULT_SYNC_PERIOD
    min_sync_period: float = DEFAULT_MIN_SYNC_PERIOD
    config_sync_period: float = DEFAULT_CONFIG_SYNC_PERIOD  # informer resync period
    healthz_bind_address: str = DEFAULT_HEALTHZ_BIND_ADDRESS  # "IP:port"; "" disables
    metrics_bind_address: str = DEFAULT_METRICS_BIND_ADDRESS  # "IP:port"; "" disables
    bind_address_hard_fail: bool = False  # exit when the healthz or metrics port cannot bind
    # kube-proxy's --bind-address / bindAddress: despite the name, nothing binds to it; an
    # address that is not 0.0.0.0 or :: replaces the node IP of its family.
    bind_address: str = "0.0.0.0"
    verbosity: int = 0
    logging_format: LoggingFormat = LoggingFormat.TEXT
    from_file: str | None = None  # read objects from this file instead of the API
    once: bool = False  # sync once, then exit
    # "": only services without the service.kubernetes.io/service-proxy-name label
    service_proxy_name: str = ""
    iptables_backend: IptablesBackend = IptablesBackend.AUTO
    userspace_idle_timeout: float = DEFAULT_USERSPACE_IDLE_TIMEOUT
    userspace_udp_idle_timeout: float = DEFAULT_USERSPACE_UDP_IDLE_TIMEOUT
    userspace_port_range: tuple[int, int] | None = None  # inclusive; None: any free port
    userspace_endpoint_grace: float = DEFAULT_USERSPACE_ENDPOINT_GRACE
    userspace_drain_grace: float = DEFAULT_USERSPACE_DRAIN_GRACE
    userspace_max_connections: int = DEFAULT_USERSPACE_MAX_CONNECTIONS
    cleanup_and_exit: bool = False  # kube-proxy's --cleanup
    init_only: bool = False  # kube-proxy's --init-only: kproxy has no privileged setup step
    notices: tuple[Notice, ...] = field(default=(), compare=False)

    @property
    def node_ip_override(self) -> str | None:
        """The node IP --bind-address sets for its family, or None (unspecified address)."""
        return None if self.bind_address in ("0.0.0.0", "::") else self.bind_address
