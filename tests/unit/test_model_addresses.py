"""IP and CIDR normalisation: strict like Go's net.ParseIP / ParseCIDR, canonical output."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kproxy.model.addresses import (
    clear_caches,
    ip_family,
    normalize_cidr,
    normalize_cidr_sloppy,
    normalize_ip,
    special_ip_problem,
)
from kproxy.model.types import IPFamily


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  # RFC 5952: first longest run
        ("0001:0db8::0001", "1:db8::1"),
        ("::", "::"),
        ("::1.2.3.4", "::102:304"),  # IPv4-compatible: printed in hex, as Go does
        ("::ffff:10.0.0.1", "10.0.0.1"),  # IPv4-mapped is IPv4 for Go, so for kube-proxy
        ("010.0.0.1", None),  # leading zeros: rejected since Go 1.17
        ("10.0.0.01", None),
        ("256.0.0.1", None),
        ("10.0.0", None),
        ("10.0.0.1.", None),
        (" 10.0.0.1", None),
        ("10.0.0.1 ", None),
        ("1\u0660.0.0.1", None),  # ARABIC-INDIC DIGIT ZERO: a digit, but not ASCII
        ("fe80::1%eth0", None),  # scope ids never appear in Kubernetes objects
        ("2001:db8::g", None),
        ("10.0.0.0/8", None),
        ("", None),
        ("None", None),
        ("a" * 1000, None),
        (None, None),
        (167772161, None),  # an int is not an address, even if ipaddress would take it
        (["10.0.0.1"], None),
    ],
)
def test_normalize_ip_is_as_strict_as_go_and_canonical(text: object, expected: str | None) -> None:
    clear_caches()
    assert normalize_ip(text) == expected
    assert normalize_ip(text) == expected  # and the same again from the cache


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits cleared, as net.ParseCIDR's network
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.1/32", "192.168.1.1/32"),
        ("2001:DB8::1/64", "2001:db8::/64"),
        ("::/0", "::/0"),
        ("10.0.0.0/33", None),
        ("10.0.0.0/08", None),  # leading zero in the prefix length
        ("10.0.0.0/255.0.0.0", None),  # netmask form: Go does not accept it
        ("10.0.0.0", None),  # a bare address is not a CIDR for ParseCIDR
        ("10.0.0.0/", None),
        ("010.0.0.0/8", None),
        ("::ffff:10.0.0.0/104", None),  # IPv4-mapped prefix: ambiguous family
        ("2001:db8::/129", None),
        (" 10.0.0.0/8", None),  # callers trim where kube-proxy trims
        (None, None),
    ],
)
def test_normalize_cidr_masks_host_bits_and_rejects_odd_forms(
    text: object, expected: str | None
) -> None:
    clear_caches()
    assert normalize_cidr(text) == expected
    assert normalize_cidr(text) == expected


def test_ip_family_of_normalised_addresses() -> None:
    assert ip_family("10.0.0.1") is IPFamily.IPV4
    assert ip_family("2001:db8::1") is IPFamily.IPV6
    assert ip_family("2001:db8::/64") is IPFamily.IPV6


@given(st.ip_addresses())
def test_every_address_normalises_to_what_ipaddress_prints(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = str(address.ipv4_mapped)
    assert normalize_ip(str(address)) == expected
    assert normalize_ip(address.exploded) == expected


@given(st.text(max_size=60))
def test_normalize_ip_never_raises_and_agrees_with_ipaddress(text: str) -> None:
    result = normalize_ip(text)
    if result is not None:
        assert ipaddress.ip_address(result) is not None
        assert normalize_ip(result) == result  # idempotent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("010.001.000.000/016", "10.1.0.0/16"),  # Go's ParseCIDRSloppy reads decimal
        ("0010.0.0.1/08", "10.0.0.0/8"),
        ("10.1.2.3/32", "10.1.2.3/32"),
        ("2001:DB8::1/064", "2001:db8::/64"),
        ("256.0.0.0/8", None),
        ("10.0.0.0/33", None),
        ("10.0.0.0", None),
        ("10.0.0/8", None),
        ("10.0.0.0/-1", None),
        ("1" * 200 + ".0.0.0/8", None),
        ("::ffff:10.0.0.0/104", None),
        (" 10.0.0.0/8", None),  # trimming is the caller's: the API server trims first
        (8, None),
    ],
)
def test_sloppy_cidrs_are_read_as_kube_proxy_reads_source_ranges(
    text: object, expected: str | None
) -> None:
    clear_caches()
    assert normalize_cidr_sloppy(text) == expected
    assert normalize_cidr_sloppy(text) == expected  # memoised


@pytest.mark.parametrize(
    ("ip", "special"),
    [("10.0.0.1", False), ("0.0.0.0", True), ("127.0.0.1", True), ("127.255.0.9", True),
     ("169.254.1.1", True), ("224.0.0.1", True), ("224.0.1.1", False), ("1.2.3.4", False),
     ("::", True), ("::1", True), ("fe80::1", True), ("febf::1", True), ("fec0::1", False),
     ("ff02::1", True), ("ff12::1", True), ("ff05::1", False), ("2001:db8::1", False)],
)
def test_special_addresses_are_those_the_api_refuses_as_endpoints(ip: str, special: bool) -> None:
    assert (special_ip_problem(ip) is not None) is special
