"""Chain names derived from content, short enough for iptables.

kube-proxy names a service port's chains ``KUBE-SVC-`` + the first 16 characters of the
base32-encoded sha256 of the service port name and protocol. kproxy does the same with its own
prefixes, so that a name depends only on what the chain stands for: a restarted kproxy computes
the same names as the one before it, and a full sync finds its own chains in place.
"""

from __future__ import annotations

import base64
import hashlib

from kproxy.iptables.ruleset import CHAIN_PREFIX, MAX_CHAIN_NAME

# 16 base32 characters carry 80 bits: collisions are not a practical concern at any cluster
# size, and prefixes of up to 12 characters still fit the 28-character limit.
HASH_LENGTH = 16
MAX_HASHED_PREFIX = MAX_CHAIN_NAME - HASH_LENGTH


def name_hash(*parts: str) -> str:
    """The 16-character base32 sha256 of ``parts`` concatenated, as kube-proxy computes it.

    The parts are joined without a separator, exactly as kube-proxy hashes
    ``servicePortName + protocol``; callers whose parts could be ambiguous when concatenated
    include their own separator.
    """
    digest = hashlib.sha256("".join(parts).encode()).digest()
    # 10 bytes are exactly 16 base32 characters, the same as the first 16 of the whole digest.
    return base64.b32encode(digest[:10]).decode("ascii")


def hashed_chain_name(prefix: str, *parts: str) -> str:
    """``prefix`` followed by :func:`name_hash` of ``parts``.

    ``hashed_chain_name("KPROXY-SVC-", "default/kubernetes:https", "tcp")`` gives the name
    kube-proxy would give that port's ``KUBE-SVC-`` chain, with kproxy's prefix.
    """
    check_hashed_prefix(prefix)
    return prefix + name_hash(*parts)


def hex_chain_name(prefix: str, *parts: str) -> str:
    """``prefix`` followed by 16 upper-case hex digits of the sha256 of ``parts`` concatenated.

    For chains that have no kube-proxy counterpart and are named by the thousand (dispatch
    buckets): hex encoding costs a fifth of base32 in Python.
    """
    check_hashed_prefix(prefix)
    digest = hashlib.sha256("".join(parts).encode()).hexdigest()
    return prefix + digest[:HASH_LENGTH].upper()


def check_hashed_prefix(prefix: str) -> None:
    """Raise ValueError unless ``prefix`` + a hash makes a valid kproxy chain name."""
    if not prefix.startswith(CHAIN_PREFIX):
        raise ValueError(f"chain name prefix {prefix!r} does not start with {CHAIN_PREFIX!r}")
    if len(prefix) > MAX_HASHED_PREFIX:
        raise ValueError(
            f"chain name prefix {prefix!r} is longer than {MAX_HASHED_PREFIX} characters: "
            f"with a {HASH_LENGTH}-character hash it would exceed {MAX_CHAIN_NAME}"
        )
