"""Per-endpoint chains (``KPROXY-SEP-<hash>``) and the balancing rules that pick one.

This is the bulk of a large ruleset (10,000 services x 10 endpoints are 100,000 SEP chains),
so it is written for speed: each endpoint's address and chain name are computed once, the
name hash continues the sha256 state of the port's part of the input, and base32 is done
with a table rather than :func:`base64.b32encode` (pure Python, and four times slower).

Names hash kube-proxy's input, ``ns/name:port`` + protocol + ``ip:port``, exactly as
:func:`kproxy.iptables.names.name_hash` does (a test holds the two equal).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from kproxy.iptables.ruleset import Chain
from kproxy.iptables.rulesyntax import comment, probability, quote, recent_mask
from kproxy.iptables.serviceview import FamilyServicePort
from kproxy.iptables.staticchains import MARK_MASQ
from kproxy.model.types import Endpoint, IPFamily

ENDPOINT_CHAIN_PREFIX = "KPROXY-SEP-"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Every 15-bit value as three base32 digits (32,768 strings): 16 digits are 80 bits, read
# as five triples and one last digit.
_BASE32_TRIPLES = tuple(a + b + c for a in _BASE32 for b in _BASE32 for c in _BASE32)
_MASK15 = 0x7FFF


def base32_prefix(digest: bytes) -> str:
    """The first 16 characters of base32(digest), as kube-proxy truncates its hashes."""
    value = int.from_bytes(digest[:10], "big")
    triples = _BASE32_TRIPLES
    return (
        triples[value >> 65] + triples[(value >> 50) & _MASK15]
        + triples[(value >> 35) & _MASK15] + triples[(value >> 20) & _MASK15]
        + triples[(value >> 5) & _MASK15] + _BASE32[value & 31]
    )


def port_hash_state(view: FamilyServicePort) -> hashlib._Hash:
    """sha256 after the port's part of the hash input (``ns/name:port`` + protocol)."""
    return hashlib.sha256((view.name_text + view.protocol).encode())


@dataclass(frozen=True, slots=True)
class EndpointTargets:
    """Where the balancing rules send each endpoint, by position in ``endpoints``."""

    endpoints: Sequence[Endpoint]
    addresses: list[str]  # ``ip:port``, ``[ip]:port`` for IPv6
    chains: list[str]

    def for_subset(self, subset: Sequence[Endpoint]) -> tuple[list[str], list[str]]:
        """Addresses and chains of ``subset``, whose members are objects of ``endpoints``."""
        if subset is self.endpoints:
            return self.addresses, self.chains
        position = {id(endpoint): index for index, endpoint in enumerate(self.endpoints)}
        indexes = [position[id(endpoint)] for endpoint in subset]
        return [self.addresses[i] for i in indexes], [self.chains[i] for i in indexes]


def endpoint_chains(
    view: FamilyServicePort,
    endpoints: Sequence[Endpoint],
    with_comments: bool,
) -> tuple[list[Chain], EndpointTargets]:
    """One SEP chain per endpoint (hairpin masquerade, affinity record, DNAT), and targets.

    The targets give each endpoint's address and chain to :func:`balancing_rules`.
    """
    protocol = view.protocol
    text = f" -m comment --comment {quote(view.name_text)}" if with_comments else ""
    affinity = ""
    if view.affinity_seconds is not None:
        affinity = f" -m recent --set --name {{chain}} {recent_mask(view.family)}"
    ipv6 = view.family is IPFamily.IPV6
    host_suffix = "/128" if ipv6 else "/32"
    port_hash = port_hash_state(view)
    chains: list[Chain] = []
    addresses: list[str] = []
    names: list[str] = []
    for endpoint in endpoints:
        ip = endpoint.ip
        address = f"[{ip}]:{endpoint.port}" if ipv6 else f"{ip}:{endpoint.port}"
        state = port_hash.copy()
        state.update(address.encode())
        chain = ENDPOINT_CHAIN_PREFIX + base32_prefix(state.digest())
        addresses.append(address)
        names.append(chain)
        chains.append(Chain(chain, (
            # Hairpin: a pod reaching itself through the service must see another source,
            # or it would answer itself directly and the connection would not match.
            f"-s {ip}{host_suffix}{text} -j {MARK_MASQ}",
            f"-p {protocol}{text}{affinity.format(chain=chain) if affinity else ''} "
            f"-m {protocol} -j DNAT --to-destination {address}",
        )))
    return chains, EndpointTargets(endpoints, addresses, names)


def balancing_rules(
    view: FamilyServicePort,
    endpoints: Sequence[Endpoint],
    targets: EndpointTargets,
    first_rule: str | None,
    with_comments: bool,
) -> tuple[str, ...]:
    """A SVC/SVL chain: ``first_rule`` (masquerade), affinity lookups, then random choice.

    The i-th of n endpoints is taken with probability 1/(n-i), the last one always: each
    endpoint ends up equally likely.
    """
    rules: list[str] = [] if first_rule is None else [first_rule]
    addresses, chains = targets.for_subset(endpoints)
    name = view.name_text
    texts = (
        [f"{comment(f'{name} -> {address}')} " for address in addresses]
        if with_comments else [""] * len(addresses)
    )
    affinity = view.affinity_seconds
    if affinity is not None:
        mask = recent_mask(view.family)
        for text, chain in zip(texts, chains, strict=True):
            rules.append(
                f"{text}-m recent --rcheck --seconds {affinity} --reap --name {chain} "
                f"{mask} -j {chain}"
            )
    remaining = len(chains)
    for text, chain in zip(texts, chains, strict=True):
        if remaining > 1:
            rules.append(
                f"{text}-m statistic --mode random --probability {probability(remaining)} "
                f"-j {chain}"
            )
        else:
            rules.append(f"{text}-j {chain}")
        remaining -= 1
    return tuple(rules)
