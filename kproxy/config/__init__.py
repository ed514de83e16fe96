"""kproxy's configuration: kube-proxy's flags and ``KubeProxyConfiguration`` file → ProxyConfig.

Modules, one concept each: ``govalues`` (Go syntax for bools, ints, durations),
``addresses`` (IPs, CIDRs, listen addresses), ``values`` (modes, names, ranges),
``flags`` (flag table and pflag-compatible argv handling), ``fileschema`` and ``fileload``
(the config file), ``resolve`` (precedence, defaults, validation), ``record`` (the result).
"""

from kproxy.config.addresses import NODEPORT_ADDRESSES_PRIMARY
from kproxy.config.errors import ConfigError
from kproxy.config.fileload import MAX_CONFIG_FILE_BYTES
from kproxy.config.flags import add_run_flags, normalise_argv
from kproxy.config.record import (
    DetectLocalMode,
    IptablesBackend,
    LoggingFormat,
    Notice,
    ProxyConfig,
    ProxyMode,
)
from kproxy.config.resolve import config_from_args, parse_run_config

__all__ = [
    "MAX_CONFIG_FILE_BYTES",
    "NODEPORT_ADDRESSES_PRIMARY",
    "ConfigError",
    "DetectLocalMode",
    "IptablesBackend",
    "LoggingFormat",
    "Notice",
    "ProxyConfig",
    "ProxyMode",
    "add_run_flags",
    "config_from_args",
    "normalise_argv",
    "parse_run_config",
]
