"""Parsers for the kproxy-specific kinds of value: modes, names, ranges, timeouts.

Each takes the text (or number) as given and returns the typed value, or raises
``ValueError`` with a message meant to follow the field's name.
"""

from __future__ import annotations

import re

from kproxy.config.govalues import format_go_duration, parse_go_duration, seconds
from kproxy.config.record import DetectLocalMode, IptablesBackend, LoggingFormat, ProxyMode

# kube-proxy modes kproxy does not implement get a clearer message than "invalid".
_OTHER_KUBE_PROXY_MODES = frozenset({"ipvs", "nftables", "kernelspace"})
# Linux interface names: at most IFNAMSIZ-1 bytes, no slash, colon or whitespace.
_INTERFACE_NAME = re.compile(r"[^\s/:]{1,15}")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_DECIMAL = re.compile(r"[+-]?[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")


def _choices(enum_type: type[ProxyMode | DetectLocalMode | IptablesBackend | LoggingFormat]) -> str:
    names = [member.value for member in enum_type]
    return ", ".join(names[:-1]) + " or " + names[-1]


def parse_proxy_mode(text: str) -> ProxyMode:
    """``""`` means the default, iptables, as in kube-proxy."""
    if text == "":
        return ProxyMode.IPTABLES
    try:
        return ProxyMode(text)
    except ValueError:
        pass
    if text in _OTHER_KUBE_PROXY_MODES:
        raise ValueError(f"kproxy implements the iptables and userspace modes, not {text!r}")
    raise ValueError(f"must be {_choices(ProxyMode)}, got {text!r}")


def parse_detect_local_mode(text: str) -> DetectLocalMode:
    """``""`` means kube-proxy's default, ClusterCIDR. Names are case-sensitive, as there."""
    if text == "":
        return DetectLocalMode.CLUSTER_CIDR
    try:
        return DetectLocalMode(text)
    except ValueError:
        raise ValueError(f"must be {_choices(DetectLocalMode)}, got {text!r}") from None


def parse_iptables_backend(text: str) -> IptablesBackend:
    try:
        return IptablesBackend(text)
    except ValueError:
        raise ValueError(f"must be {_choices(IptablesBackend)}, got {text!r}") from None


def parse_logging_format(text: str) -> LoggingFormat:
    """``""`` means text, kube-proxy's default."""
    if text == "":
        return LoggingFormat.TEXT
    try:
        return LoggingFormat(text)
    except ValueError:
        raise ValueError(f"must be {_choices(LoggingFormat)}, got {text!r}") from None


def parse_interface_name(text: str) -> str:
    """A Linux interface name or name prefix (it ends up in iptables ``-i`` arguments)."""
    if not text:
        raise ValueError("must not be empty")
    if _INTERFACE_NAME.fullmatch(text) is None:
        raise ValueError(
            "must be a network interface name: 1 to 15 characters without spaces, "
            f"'/' or ':', got {text!r}"
        )
    return text


def parse_label_value(text: str) -> str:
    """A Kubernetes label value (it ends up in a label selector)."""
    if _LABEL_VALUE.fullmatch(text) is None:
        raise ValueError(
            "must be a label value: at most 63 letters, digits, '-', '_' or '.', starting "
            f"and ending with a letter or digit, got {text!r}"
        )
    return text


def parse_verbosity(text: str) -> int:
    """klog's ``-v``: a decimal integer; negative levels have no meaning."""
    if _DECIMAL.fullmatch(text) is None or not 0 <= int(text) < 2**31:
        raise ValueError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def parse_positive_count(text: str) -> int:
    """A decimal integer of at least 1 (a cap on connections or sessions)."""
    if _DECIMAL.fullmatch(text) is None or not 1 <= int(text) < 2**31:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return int(text)


def parse_masquerade_bit(value: int) -> int:
    if not 0 <= value <= 31:
        raise ValueError(f"must be an integer between 0 and 31, got {value}")
    return value


def parse_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port between 0 and 65535, got {value}")
    return value


def parse_port_range(text: str) -> tuple[int, int] | None:
    """kube-proxy's old ``--proxy-port-range``: ``BEGIN-END``, ``BEGIN+OFFSET`` or ``PORT``.

    Empty, ``0`` and ``0-0`` mean "any free port" (None). Both ends are inclusive.
    """
    text = text.strip()
    if text in ("", "0", "0-0"):
        return None
    shape = ValueError(f"must be a port range such as 30000-32767 or 30000+2767, got {text!r}")
    begin_text, separator, end_text = text.partition("-")
    if not separator:
        begin_text, separator, end_text = text.partition("+")
    if not separator:
        end_text = begin_text
    if _PORT.fullmatch(begin_text) is None or _PORT.fullmatch(end_text) is None:
        raise shape
    begin = int(begin_text)
    end = begin + int(end_text) if separator == "+" else int(end_text)
    if not 1 <= begin <= end <= 65535:
        raise ValueError(
            f"must be a range of ports between 1 and 65535, low end first, got {text!r}"
        )
    return begin, end


def parse_positive_duration(text: str) -> float:
    """A Go duration greater than zero, in seconds."""
    return check_positive_duration(parse_go_duration(text))


def parse_non_negative_duration(text: str) -> float:
    """A Go duration of zero or more, in seconds."""
    return check_non_negative_duration(parse_go_duration(text))


def check_positive_duration(nanoseconds: int) -> float:
    if nanoseconds <= 0:
        raise ValueError(f"must be greater than 0, got {format_go_duration(nanoseconds)}")
    return seconds(nanoseconds)


def check_non_negative_duration(nanoseconds: int) -> float:
    if nanoseconds < 0:
        raise ValueError(f"must not be negative, got {format_go_duration(nanoseconds)}")
    return seconds(nanoseconds)
