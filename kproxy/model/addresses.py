"""Fast, strict normalisation of IP address and CIDR strings from API objects.

The parsers see the same few thousand addresses over and over (every Service or
EndpointSlice update re-parses the whole object), so results are memoised in small
bounded dictionaries, and the common IPv4 case is validated by one regular expression
instead of ``ipaddress``. The rules are those of Python's ``ipaddress`` (3.11), which
match Go's ``net.ParseIP`` in the cases that matter here:

- IPv4 octets with leading zeros (``010.0.0.1``) are rejected, as Go has done since 1.17
  (the API server's sloppy parser would read them as decimal; we refuse to guess), except
  in ``normalize_cidr_sloppy``: load-balancer source ranges are read sloppily by kube-proxy
  itself (``netutils.ParseCIDRSloppy``), so they are read as decimal there too.
- IPv6 is returned in RFC 5952 form (lower case, longest zero run compressed), which is
  what both ``ipaddress`` and Go print.
- IPv6 scope ids (``fe80::1%eth0``) are rejected: Kubernetes never allows them.
- IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are IPv4 addresses, as they are for Go
  (``To4() != nil``) and therefore for kube-proxy: they normalise to ``1.2.3.4``. As CIDRs
  they are ambiguous and rejected.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from kproxy.model.memo import Memo
from kproxy.model.types import IPFamily

# The longest textual IPv6 address: eight groups, or six plus an embedded IPv4 address.
_MAX_IP_TEXT: Final = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")
_MAX_CIDR_TEXT: Final = _MAX_IP_TEXT + len("/128")

_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_TEXT: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
_PREFIX_LENGTH_TEXT: Final = re.compile(r"0|[1-9][0-9]{0,2}", re.ASCII)

# Bounded so that a stream of garbage cannot grow memory without limit; when full the
# cache simply starts over (cheaper and simpler than LRU bookkeeping on the hot path).
_CACHE_LIMIT: Final = 200_000
# "" is never a normalised result, so it marks "not cached" (None is a cached "invalid").
_NOT_CACHED: Final = ""
_ip_cache: dict[str, str | None] = {}
_cidr_cache: dict[str, str | None] = {}

# Go's sloppy IPv4 syntax (the net package before 1.17): decimal octets of any length
# (leading zeros allowed), checked to be at most 255 below; the prefix length likewise.
_SLOPPY_IPV4_CIDR_TEXT: Final = re.compile(
    r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)/([0-9]+)", re.ASCII
)
_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
# Unspecified, loopback, link-local and link-local multicast IPv4 addresses begin so.
_SPECIAL_IPV4_PREFIXES: Final = ("0.0.0.0", "127.", "169.254.", "224.0.0.")


def normalize_ip(text: object) -> str | None:
    """The canonical form of an IP address string, or None if it is not one."""
    if type(text) is not str:
        return None
    cached = _ip_cache.get(text, _NOT_CACHED)
    if cached != _NOT_CACHED:
        return cached
    result = _normalize_ip_uncached(text)
    if len(_ip_cache) >= _CACHE_LIMIT:
        _ip_cache.clear()
    _ip_cache[text] = result
    return result


def normalize_cidr(text: object) -> str | None:
    """The canonical network form of a CIDR string (host bits cleared), or None.

    ``10.1.2.3/8`` becomes ``10.0.0.0/8``, as Go's ``net.ParseCIDR`` (used by kube-proxy)
    masks the address. The prefix length must be plain decimal without leading zeros;
    netmask forms (``/255.0.0.0``) are rejected.
    """
    if type(text) is not str:
        return None
    cached = _cidr_cache.get(text, _NOT_CACHED)
    if cached != _NOT_CACHED:
        return cached
    result = _normalize_cidr_uncached(text)
    if len(_cidr_cache) >= _CACHE_LIMIT:
        _cidr_cache.clear()
    _cidr_cache[text] = result
    return result


def normalize_cidr_sloppy(text: object) -> str | None:
    """``normalize_cidr`` with Go's sloppy syntax, as kube-proxy and the API server read
    loadBalancerSourceRanges: ``010.001.0.0/016`` is ``10.1.0.0/16``."""
    return _sloppy_cidr(text) if type(text) is str else None


def _sloppy_cidr_uncached(text: str) -> str | None:
    return normalize_cidr(text) or _normalize_sloppy_cidr_uncached(text)


def _special_ip_uncached(normalized_ip: str) -> str | None:
    packed = ipaddress.IPv6Address(normalized_ip).packed
    if normalized_ip == "::":
        return "may not be unspecified (::)"
    if normalized_ip == "::1":
        return "may not be the loopback address (::1)"
    if packed[0] == 0xFE and packed[1] & 0xC0 == 0x80:
        return "may not be in the link-local range (fe80::/10)"
    if packed[0] == 0xFF and packed[1] & 0x0F == 0x02:
        return "may not be in the link-local multicast range (ff02::/16)"
    return None


_sloppy_cidr: Final = Memo(_sloppy_cidr_uncached, _CACHE_LIMIT)
_special_ipv6: Final = Memo(_special_ip_uncached, _CACHE_LIMIT)


def special_ip_problem(normalized_ip: str) -> str | None:
    """Why an address may not be an endpoint or external IP (the API's ValidateEndpointIP:
    unspecified, loopback, link-local unicast or multicast), or None if it may."""
    if ":" in normalized_ip:
        return _special_ipv6(normalized_ip)
    # The normalised IPv4 text is canonical: prefixes of it are exact tests.
    if not normalized_ip.startswith(_SPECIAL_IPV4_PREFIXES):
        return None
    if normalized_ip == "0.0.0.0":
        return "may not be unspecified (0.0.0.0)"
    if normalized_ip.startswith("127."):
        return "may not be in the loopback range (127.0.0.0/8)"
    if normalized_ip.startswith("169.254."):
        return "may not be in the link-local range (169.254.0.0/16)"
    if normalized_ip.startswith("224.0.0."):
        return "may not be in the link-local multicast range (224.0.0.0/24)"
    return None


def ip_family(normalized_ip: str) -> IPFamily:
    """The family of an address already returned by ``normalize_ip`` or ``normalize_cidr``."""
    return IPFamily.IPV6 if ":" in normalized_ip else IPFamily.IPV4


def _normalize_ip_uncached(text: str) -> str | None:
    if len(text) > _MAX_IP_TEXT or not text.isascii():
        return None
    if _IPV4_TEXT.fullmatch(text):
        return text  # the pattern admits only the canonical form
    if ":" not in text or "%" in text:
        return None
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return address.compressed


def _normalize_cidr_uncached(text: str) -> str | None:
    if len(text) > _MAX_CIDR_TEXT or not text.isascii():
        return None
    address_text, slash, prefix_text = text.partition("/")
    if not slash or not _PREFIX_LENGTH_TEXT.fullmatch(prefix_text):
        return None
    address = _normalize_ip_uncached(address_text)
    if address is None:
        return None
    if ":" not in address and ":" in address_text:
        return None  # IPv4-mapped: is /104 an IPv6 or an IPv4 prefix? Refuse to guess.
    try:
        network = ipaddress.ip_network(f"{address}/{prefix_text}", strict=False)
    except ValueError:
        return None  # prefix longer than the address
    return network.compressed


def _normalize_sloppy_cidr_uncached(text: str) -> str | None:
    if len(text) > 2 * _MAX_CIDR_TEXT or not text.isascii():
        return None
    match = _SLOPPY_IPV4_CIDR_TEXT.fullmatch(text)
    if match is not None:
        octets = [int(part) for part in match.groups()[:4]]
        prefix = int(match[5])
        if max(octets) > 255 or prefix > 32:
            return None
        return normalize_cidr(".".join(map(str, octets)) + f"/{prefix}")
    address_text, slash, prefix_text = text.partition("/")
    if not slash or ":" not in address_text or not _DIGITS.fullmatch(prefix_text):
        return None
    return normalize_cidr(f"{address_text}/{int(prefix_text)}")


def clear_caches() -> None:
    """Forget memoised results (benchmarks measure cold parsing with it)."""
    _ip_cache.clear()
    _cidr_cache.clear()
    _sloppy_cidr.clear()
    _special_ipv6.clear()
