"""Whether a service port can be written into a kernel payload at all (mode-neutral, pure).

Every mode copies parts of a service port into text the kernel's tools parse: names into
rule comments, addresses and ports into matches and targets. One string those tools reject
fails the whole transaction, so every service on the node would go unprogrammed. The model
validates objects as the API server does, but renderers do not rely on it: a mode asks
:func:`service_port_problem` first and drops the one port it names, with that reason.

What the tools accept, checked against iptables 1.8.9 (legacy and nft):

- a NUL ends the line for iptables-restore's tokenizer: right after the opening quote it
  fails the payload (``option "--comment" requires an argument``), later it silently cuts
  the rule (target included); a newline ends the rule and starts another;
- other control characters and non-ASCII bytes are stored and printed back raw, but
  ``iptables-save``'s output is then read back line by line, where ``str.splitlines``
  also breaks at VT, FF, FS/GS/RS, NEL and U+2028;
- comments keep at most 255 bytes (``XT_MAX_COMMENT_LEN`` is 256 with the NUL): longer ones
  are cut without an error, a multi-byte character possibly in half, so the kernel's copy
  never equals the plan again;
- inside double quotes ``"``, ``\\`` and ``'`` are escaped with a backslash, and
  iptables-save prints them back the same way.

The rule kept here: names are printable ASCII (space to ``~``) and short enough that the
longest comment built from them fits in 255 bytes; addresses are IP addresses of their
family (IPv4 dotted quad, IPv6 as :mod:`ipaddress` reads it, no zone), CIDRs likewise with a
prefix length in range; port numbers are ints 1-65535. Quotes and backslashes in names are
left to the renderer's escaping. The checks are regular expressions and small caches: the
planner asks once per changed port (20,000 ports per full sync).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

from kproxy.model.types import Endpoint, Protocol, ServicePort, TrafficPolicy

# XT_MAX_COMMENT_LEN (256) without the NUL.
MAX_COMMENT_BYTES = 255
# The longest text a mode adds around ``ns/name:port`` in one comment ("other traffic to
# NAME will be dropped by KPROXY-PROXY-FIREWALL" is 58; "NAME -> [ipv6]:port" is 51), with
# room to spare for the nftables mode's comments.
COMMENT_OVERHEAD = 72
MAX_NAME_TEXT = MAX_COMMENT_BYTES - COMMENT_OVERHEAD
# Affinity timeouts go into ``recent --seconds`` (u32) and nft's ``timeout``.
MAX_AFFINITY_SECONDS = 2**31 - 1

_PRINTABLE = re.compile(r"[ -~]*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV6_CHARS = re.compile(r"[0-9a-fA-F:.]+")
# Endpoint addresses already found good: most replans see the same ones again (a set lookup
# costs a tenth of the regular expression). Bounded.
_GOOD_IPS: set[str] = set()
_MAX_GOOD_IPS = 1 << 20


def text_problem(text: object, max_length: int = MAX_NAME_TEXT) -> str | None:
    """Why ``text`` cannot go into a comment, or None if it can."""
    if not isinstance(text, str):
        return f"not a string: {type(text).__name__}"
    if len(text) > max_length:
        return f"longer than {max_length} characters ({len(text)})"
    if not _PRINTABLE.fullmatch(text):
        bad = next(ch for ch in text if not " " <= ch <= "~")
        return f"contains {_describe(bad)}"
    return None


def ip_ok(text: object) -> bool:
    """An IPv4 or IPv6 address the kernel's tools parse (IPv4 dotted quad, IPv6 no zone)."""
    if not isinstance(text, str):
        return False
    if ":" not in text:
        return _IPV4.fullmatch(text) is not None
    return _ipv6_ok(text)


def cidr_ok(text: object) -> bool:
    if not isinstance(text, str):
        return False
    address, slash, prefix = text.partition("/")
    if not slash or not prefix.isdigit() or len(prefix) > 3 or not prefix.isascii():
        return False
    return ip_ok(address) and int(prefix) <= (128 if ":" in address else 32)


def port_ok(number: object, *, optional: bool = False) -> bool:
    """An int in 1-65535 (``optional``: or None). bool is not a port."""
    if number is None:
        return optional
    return type(number) is int and 1 <= number <= 65535


def service_port_problem(port: ServicePort, endpoints: Iterable[Endpoint] = ()) -> str | None:
    """Why ``port`` (with ``endpoints``) cannot be rendered, or None if it can.

    The reason names the field, so the one log line says what to fix.
    """
    return port_problem(port) or endpoints_problem(endpoints)


def port_problem(port: ServicePort) -> str | None:
    """Why the port's own fields cannot be rendered, or None if they can."""
    if _port_fine(port):
        return None
    return _port_problem(port)


def endpoints_problem(endpoints: Iterable[Endpoint]) -> str | None:
    """Why one of ``endpoints`` cannot be rendered, or None if all can."""
    good = _GOOD_IPS
    ipv4 = _IPV4.fullmatch
    try:
        for endpoint in endpoints:
            number = endpoint.port
            if type(number) is not int or not 0 < number < 65536:
                return _endpoints_problem(endpoints)
            ip = endpoint.ip
            if ip in good:
                continue
            if ipv4(ip) is None and not (":" in ip and _ipv6_ok(ip)):
                return _endpoints_problem(endpoints)
            if len(good) >= _MAX_GOOD_IPS:
                good.clear()
            good.add(ip)
    except TypeError:  # not a string (or not hashable)
        return _endpoints_problem(endpoints)
    return None


def _port_fine(port: ServicePort) -> bool:
    """The fast path of :func:`port_problem` (run for every changed port): True when the
    port certainly renders; False sends it to the checks that say why not."""
    name = port.name
    try:
        text = name.namespace + name.name + name.port
        if len(text) > MAX_NAME_TEXT - 2 or _PRINTABLE.fullmatch(text) is None:
            return False
        number = port.port
        if type(number) is not int or not 0 < number < 65536:
            return False
        if port.node_port is not None or port.health_check_node_port is not None:
            return False  # rarer: checked in full
        affinity = port.affinity_timeout_seconds
        if type(affinity) is not int or not 0 < affinity <= MAX_AFFINITY_SECONDS:
            return False
        if (port.protocol.__class__ is not Protocol or name.protocol.__class__ is not Protocol
                or port.external_traffic_policy.__class__ is not TrafficPolicy
                or port.internal_traffic_policy.__class__ is not TrafficPolicy):
            return False
        ipv4 = _IPV4.fullmatch
        for ip in port.cluster_ips:
            if ipv4(ip) is None and not (":" in ip and _ipv6_ok(ip)):
                return False
    except TypeError:
        return False
    return not (port.external_ips or port.load_balancer_ips or port.load_balancer_source_ranges)


def _port_problem(port: ServicePort) -> str | None:
    name = port.name
    for field, text in (("namespace", name.namespace), ("name", name.name),
                        ("port name", name.port)):
        problem = text_problem(text)
        if problem is not None:
            return f"{field} {problem}"
    if len(name.namespace) + len(name.name) + len(name.port) + 2 > MAX_NAME_TEXT:
        return f"namespace/name:port longer than {MAX_NAME_TEXT} characters"
    # Typed as enums, but a record built by hand may hold anything: checked as objects.
    protocols: tuple[object, ...] = (port.protocol, name.protocol)
    if not all(isinstance(protocol, Protocol) for protocol in protocols):
        return f"unknown protocol {port.protocol!r}"
    if not port_ok(port.port):
        return f"port {port.port!r} out of range"
    if not port_ok(port.node_port, optional=True):
        return f"node port {port.node_port!r} out of range"
    if not port_ok(port.health_check_node_port, optional=True):
        return f"health check node port {port.health_check_node_port!r} out of range"
    affinity = port.affinity_timeout_seconds
    if type(affinity) is not int or not 1 <= affinity <= MAX_AFFINITY_SECONDS:
        return f"affinity timeout {affinity!r} out of range"
    policies: tuple[object, ...] = (port.external_traffic_policy, port.internal_traffic_policy)
    if not all(isinstance(policy, TrafficPolicy) for policy in policies):
        return "unknown traffic policy"
    for field, addresses in (("cluster IP", port.cluster_ips),
                             ("external IP", port.external_ips),
                             ("load balancer IP", port.load_balancer_ips)):
        for ip in addresses:
            if not ip_ok(ip):
                return f"{field} {_shown(ip)} is not an IP address"
    for cidr in port.load_balancer_source_ranges:
        if not cidr_ok(cidr):
            return f"source range {_shown(cidr)} is not a CIDR"
    return None


def _endpoints_problem(endpoints: Iterable[Endpoint]) -> str | None:
    for endpoint in endpoints:
        if not ip_ok(endpoint.ip):
            return f"endpoint IP {_shown(endpoint.ip)} is not an IP address"
        if not port_ok(endpoint.port):
            return f"endpoint {_shown(endpoint.ip)} port {endpoint.port!r} out of range"
    return None


@lru_cache(maxsize=65536)
def _ipv6_ok(text: str) -> bool:
    if not _IPV6_CHARS.fullmatch(text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _describe(character: str) -> str:
    if character.isascii():
        return f"control character {character!r}"
    return f"non-ASCII character {character!r}"


def _shown(value: object) -> str:
    """A value for a log line: repr (escapes control characters), cut to a sane length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
