"""``kproxy run``'s flags: kube-proxy's names and pflag's syntax, on top of argparse.

pflag differs from argparse in ways kube-proxy manifests rely on: booleans take an optional
``=value`` but never a separate argument, a valued flag takes the next argument even when it
starts with ``-``, ``_`` and ``-`` are interchangeable in names, and names are never
abbreviated. ``normalise_argv`` rewrites an argument list into an unambiguous
``--name=value`` form first, so argparse only has to record what it is given; values are
validated later, where the error can name the flag (see ``resolve``).
"""

from __future__ import annotations

import argparse
import enum
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass


class FlagKind(enum.Enum):
    BOOL = "bool"  # --name or --name=true|false
    VALUE = "value"  # --name VALUE or --name=VALUE; the last one wins
    LIST = "list"  # comma-separated; repeating the flag appends, as pflag's string slices do


@dataclass(frozen=True, slots=True)
class FlagSpec:
    name: str  # without the leading dashes
    kind: FlagKind
    help: str
    metavar: str = "VALUE"
    aliases: tuple[str, ...] = ()
    short: str | None = None
    # kube-proxy ignores the flag when --config is given (the file, or its default, applies).
    in_config_file: bool = False


@dataclass(frozen=True, slots=True)
class GivenFlag:
    option: str  # as the user spelled it (after normalisation), for error messages
    value: str  # BOOL and VALUE: the raw text
    items: tuple[str, ...] = ()  # LIST: every comma-separated item of every occurrence


@dataclass(frozen=True, slots=True)
class GivenFlags:
    """The flags that were actually given, by canonical name, plus compatibility-only ones."""

    values: dict[str, GivenFlag]
    compatibility_only: tuple[str, ...]  # option names, first occurrence order, no repeats

    def get(self, name: str) -> GivenFlag | None:
        return self.values.get(name)


B, V, L = FlagKind.BOOL, FlagKind.VALUE, FlagKind.LIST

KUBE_PROXY_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "config",
        V,
        "KubeProxyConfiguration file (YAML or JSON).",
        "PATH",
    ),
    FlagSpec(
        "kubeconfig",
        V,
        "kubeconfig file with the API server and credentials (default: in-cluster configuration).",
        "PATH",
        in_config_file=True,
    ),
    FlagSpec("master", V, "API server address; overrides the kubeconfig's server.", "URL"),
    FlagSpec(
        "hostname-override",
        V,
        "Name of this node (default: the OS hostname). Applies even with --config.",
        "NAME",
    ),
    FlagSpec("proxy-mode", V, "iptables (default) or userspace.", "MODE", in_config_file=True),
    FlagSpec(
        "cluster-cidr",
        V,
        "Pod CIDR range of the cluster; a comma-separated pair for "
        "dual-stack. Used by --detect-local-mode=ClusterCIDR.",
        "CIDR[,CIDR]",
        in_config_file=True,
    ),
    FlagSpec(
        "detect-local-mode",
        V,
        "How to detect traffic from local pods: ClusterCIDR "
        "(default), NodeCIDR, BridgeInterface or InterfaceNamePrefix.",
        "MODE",
        in_config_file=True,
    ),
    FlagSpec(
        "pod-bridge-interface",
        V,
        "Bridge of the local pods, for --detect-local-mode=BridgeInterface.",
        "NAME",
        in_config_file=True,
    ),
    FlagSpec(
        "pod-interface-name-prefix",
        V,
        "Name prefix of the local pods' interfaces, for --detect-local-mode=InterfaceNamePrefix.",
        "PREFIX",
        in_config_file=True,
    ),
    FlagSpec(
        "masquerade-all", B, "SNAT all traffic sent to service cluster IPs.", in_config_file=True
    ),
    FlagSpec(
        "iptables-masquerade-bit",
        V,
        "fwmark bit (0-31) that marks packets to SNAT (default 14).",
        "BIT",
        in_config_file=True,
    ),
    FlagSpec(
        "iptables-localhost-nodeports",
        B,
        "Allow NodePort services on localhost (IPv4 only; default true).",
        in_config_file=True,
    ),
    FlagSpec(
        "iptables-sync-period",
        V,
        "Maximum interval between full syncs (default 30s).",
        "DURATION",
        in_config_file=True,
    ),
    FlagSpec(
        "iptables-min-sync-period",
        V,
        "Minimum interval between syncs; 0 syncs on every change (default 1s).",
        "DURATION",
        in_config_file=True,
    ),
    FlagSpec(
        "nodeport-addresses",
        L,
        "CIDRs of the node IPs that accept NodePort traffic, or "
        "'primary' for the Node's primary IPs (default: all IPs).",
        "CIDR,...",
        in_config_file=True,
    ),
    FlagSpec(
        "healthz-bind-address",
        V,
        "IP:port of the health check server; empty disables it (default 0.0.0.0:10256).",
        "IP:PORT",
        in_config_file=True,
    ),
    FlagSpec(
        "metrics-bind-address",
        V,
        "IP:port of the metrics server; empty disables it (default 127.0.0.1:10249).",
        "IP:PORT",
        in_config_file=True,
    ),
    FlagSpec(
        "bind-address",
        V,
        "Overrides the node's IP of that address's family (NodePorts on --nodeport-addresses="
        "primary, the loadBalancerSourceRanges check of the node's own traffic); nothing binds "
        "to it, the name is kube-proxy's. 0.0.0.0 or :: (the default) keeps the Node's IPs.",
        "IP",
        in_config_file=True,
    ),
    FlagSpec(
        "bind-address-hard-fail",
        B,
        "Exit (non-zero) when the health check or metrics server cannot bind its address, "
        "instead of logging it and retrying.",
        in_config_file=True,
    ),
    FlagSpec(
        "healthz-port",
        V,
        "Deprecated: health check port when --healthz-bind-address is "
        "a bare IP; 0 disables the server.",
        "PORT",
        in_config_file=True,
    ),
    FlagSpec(
        "metrics-port",
        V,
        "Deprecated: metrics port when --metrics-bind-address is a bare IP; 0 disables the server.",
        "PORT",
        in_config_file=True,
    ),
    FlagSpec(
        "config-sync-period",
        V,
        "How often the informers resync from the API server (default 15m0s).",
        "DURATION",
        in_config_file=True,
    ),
    FlagSpec(
        "proxy-port-range",
        V,
        "userspace mode: host ports to listen on, BEGIN-END, "
        "BEGIN+OFFSET or PORT (default: any free port).",
        "RANGE",
        in_config_file=True,
    ),
    FlagSpec(
        "v",
        V,
        "Log verbosity: 0 logs the essentials, higher numbers more detail.",
        "LEVEL",
        short="-v",
    ),
    FlagSpec("logging-format", V, "text (default) or json.", "FORMAT"),
    FlagSpec("cleanup", B, "Remove kproxy's rules and exit (see `kproxy cleanup`)."),
    FlagSpec(
        "init-only",
        B,
        "Exit after initialisation; kproxy needs no privileged setup "
        "step, so this validates the configuration and exits.",
    ),
    FlagSpec("write-config-to", V, "Not supported by kproxy.", "PATH"),
)

KPROXY_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "from-file",
        V,
        "Read Services and EndpointSlices from this YAML/JSON file instead of the API server.",
        "PATH",
    ),
    FlagSpec("once", B, "Sync once, then exit (0 if the sync succeeded)."),
    FlagSpec(
        "service-proxy-name",
        V,
        "Handle only services labelled "
        "service.kubernetes.io/service-proxy-name=NAME (default: only unlabelled ones).",
        "NAME",
    ),
    FlagSpec("iptables-backend", V, "auto (default), nft, legacy or libiptc.", "BACKEND"),
    FlagSpec(
        "userspace-idle-timeout",
        V,
        "userspace mode: close idle TCP relays after this long (default 15m0s).",
        "DURATION",
    ),
    FlagSpec(
        "userspace-udp-idle-timeout",
        V,
        "userspace mode: forget idle UDP flows after this long (default 250ms).",
        "DURATION",
        aliases=("udp-timeout",),
        in_config_file=True,
    ),
    FlagSpec(
        "userspace-endpoint-grace",
        V,
        "userspace mode: established connections to a removed endpoint are closed after "
        "this long (default 30s).",
        "DURATION",
    ),
    FlagSpec(
        "userspace-drain-grace",
        V,
        "userspace mode: on SIGTERM, established connections get this long to finish "
        "before the portal rules are removed (default 5s).",
        "DURATION",
    ),
    FlagSpec(
        "userspace-max-connections",
        V,
        "userspace mode: open TCP connections relayed at most, for the whole node "
        "(default 100000); past it, new connections wait in the kernel's backlog.",
        "COUNT",
    ),
)

# kube-proxy flags a DaemonSet may pass that have no meaning for kproxy: accepted, with a
# warning, so that an existing manifest starts instead of failing. True marks booleans.
COMPATIBILITY_FLAGS: dict[str, bool] = {
    "boot-id-file": False,
    "cleanup-iptables": True,
    "cleanup-ipvs": True,
    "cloud-provider-gce-lb-src-cidrs": False,
    "cloud-provider-gce-l7lb-src-cidrs": False,
    "azure-container-registry-config": False,
    "conntrack-max": False,
    "conntrack-max-per-core": False,
    "conntrack-min": False,
    "conntrack-tcp-be-liberal": True,
    "conntrack-tcp-timeout-close-wait": False,
    "conntrack-tcp-timeout-established": False,
    "conntrack-udp-timeout": False,
    "conntrack-udp-timeout-stream": False,
    "feature-gates": False,
    "ipvs-exclude-cidrs": False,
    "ipvs-min-sync-period": False,
    "ipvs-scheduler": False,
    "ipvs-strict-arp": True,
    "ipvs-sync-period": False,
    "ipvs-tcp-timeout": False,
    "ipvs-tcpfin-timeout": False,
    "ipvs-udp-timeout": False,
    "kube-api-burst": False,
    "kube-api-content-type": False,
    "kube-api-qps": False,
    "oom-score-adj": False,
    "profiling": True,
    "resource-container": False,
    "show-hidden-metrics-for-version": False,
    "windows-service": True,
    # klog and component-base logging flags other than -v and --logging-format
    "add-dir-header": True,
    "alsologtostderr": True,
    "log-backtrace-at": False,
    "log-dir": False,
    "log-file": False,
    "log-file-max-size": False,
    "log-flush-frequency": False,
    "log-json-info-buffer-size": False,
    "log-json-split-stream": True,
    "log-text-info-buffer-size": False,
    "log-text-split-stream": True,
    "logtostderr": True,
    "one-output": True,
    "skip-headers": True,
    "skip-log-headers": True,
    "stderrthreshold": False,
    "vmodule": False,
}

ALL_FLAGS: tuple[FlagSpec, ...] = KUBE_PROXY_FLAGS + KPROXY_FLAGS
_SPEC_BY_NAME: dict[str, FlagSpec] = {
    name: spec for spec in ALL_FLAGS for name in (spec.name, *spec.aliases)
}
_DEST_PREFIX = "kproxy_flag__"
_COMPAT_DEST = "kproxy_compatibility_flags"


def flag_spec(name: str) -> FlagSpec:
    """The spec of a flag by canonical name or alias."""
    return _SPEC_BY_NAME[name]


def _is_bool_flag(name: str) -> bool | None:
    """True/False for a known boolean/valued flag, None for a name kproxy does not know."""
    spec = _SPEC_BY_NAME.get(name)
    if spec is not None:
        return spec.kind is FlagKind.BOOL
    return COMPATIBILITY_FLAGS.get(name)


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite pflag-style arguments into ``--name=value`` tokens that argparse reads exactly.

    ``--flag_name`` becomes ``--flag-name``; a bare boolean gets ``=true``; a valued flag
    absorbs the next argument, whatever it starts with; ``-v 4``, ``-v4`` and ``-v=4`` become
    ``--v=4``. Unknown flags are left for argparse to reject. ``--`` ends the rewriting.
    """
    result: list[str] = []
    position = 0
    while position < len(argv):
        token = argv[position]
        position += 1
        if token == "--":
            result.extend(argv[position - 1 :])
            break
        if token.startswith("--") and len(token) > 2:
            name, has_value, value = token[2:].partition("=")
            name = name.replace("_", "-")
            is_bool = _is_bool_flag(name)
            if is_bool is None or has_value:
                result.append(f"--{name}{'=' if has_value else ''}{value}")
            elif is_bool:
                result.append(f"--{name}=true")
            elif position < len(argv):
                result.append(f"--{name}={argv[position]}")
                position += 1
            else:
                result.append(f"--{name}")  # argparse reports the missing value
        elif token.startswith("-v") and not token.startswith("--"):
            value = token[2:].removeprefix("=")
            if not token[2:] and position < len(argv):
                value = argv[position]
                position += 1
            elif not token[2:]:
                result.append("--v")
                continue
            result.append(f"--v={value}")
        else:
            result.append(token)
    return result


class GoFlagHelpFormatter(argparse.HelpFormatter):
    """Shows booleans as pflag does, ``--masquerade-all[=true|false]``, and never breaks a
    line inside a word at its hyphens, so that flag names stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _RecordBool):
            return ", ".join(f"{option}[=true|false]" for option in action.option_strings)
        return super()._format_action_invocation(action)


class _RecordValue(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, GivenFlag(option_string or self.dest, str(values)))


class _RecordBool(_RecordValue):
    pass


class _RecordList(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        previous: GivenFlag | None = getattr(namespace, self.dest, None)
        earlier = previous.items if previous is not None else ()
        items = tuple(item.strip() for item in str(values).split(",") if item.strip())
        setattr(
            namespace,
            self.dest,
            GivenFlag(option_string or self.dest, str(values), earlier + items),
        )


class _RecordCompatibility(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        seen: list[str] = list(getattr(namespace, _COMPAT_DEST, None) or [])
        name = option_string or self.dest
        if name not in seen:
            seen.append(name)
        setattr(namespace, _COMPAT_DEST, seen)


_ACTIONS: dict[FlagKind, type[argparse.Action]] = {
    FlagKind.BOOL: _RecordBool,
    FlagKind.VALUE: _RecordValue,
    FlagKind.LIST: _RecordList,
}


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Add every ``kproxy run`` flag to ``parser`` (create it with ``allow_abbrev=False``).

    Arguments must go through ``normalise_argv`` before ``parser.parse_args``; read the result
    with ``given_flags``.
    """
    parser.formatter_class = GoFlagHelpFormatter
    groups = (
        (
            "kube-proxy flags",
            "Same names and meanings as kube-proxy's. As in kube-proxy, flags marked [file] "
            "are ignored when --config is given: the file's value, or kube-proxy's default, "
            "applies instead.",
            KUBE_PROXY_FLAGS,
        ),
        ("kproxy flags", None, KPROXY_FLAGS),
    )
    for title, description, specs in groups:
        group = parser.add_argument_group(title, description)
        for spec in specs:
            _add_flag(group, spec)
    compatibility = parser.add_argument_group(
        "accepted for compatibility",
        "These kube-proxy flags are accepted so existing manifests keep working; they have "
        "no effect in kproxy and each logs one warning: "
        + ", ".join(f"--{name}" for name in sorted(COMPATIBILITY_FLAGS))
        + ".",
    )
    for name in COMPATIBILITY_FLAGS:
        compatibility.add_argument(
            f"--{name}", action=_RecordCompatibility, dest=_COMPAT_DEST, help=argparse.SUPPRESS
        )


def _add_flag(group: argparse._ArgumentGroup, spec: FlagSpec) -> None:
    options = [spec.short] if spec.short else []
    options += [f"--{name}" for name in (spec.name, *spec.aliases)]
    marker = " [file]" if spec.in_config_file else ""
    group.add_argument(
        *options,
        action=_ACTIONS[spec.kind],
        dest=_DEST_PREFIX + spec.name.replace("-", "_"),
        metavar=None if spec.kind is FlagKind.BOOL else spec.metavar,
        help=spec.help + marker,
    )


def given_flags(namespace: argparse.Namespace) -> GivenFlags:
    """What the user gave, from a namespace filled by a parser set up with ``add_run_flags``."""
    values: dict[str, GivenFlag] = {}
    for spec in ALL_FLAGS:
        given = getattr(namespace, _DEST_PREFIX + spec.name.replace("-", "_"), None)
        if isinstance(given, GivenFlag):
            values[spec.name] = given
    compatibility = getattr(namespace, _COMPAT_DEST, None) or []
    return GivenFlags(values, tuple(compatibility))
