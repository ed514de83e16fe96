"""The name and label syntaxes of Kubernetes (k8s.io/apimachinery/pkg/util/validation).

One definition for both the object model and the dev API server. Patterns are matched
with ``fullmatch`` (``$`` alone would accept a trailing newline) and ASCII only. The model
checks the same few thousand names again and again (namespaces, port names, label keys),
so answers are memoised (``kproxy.model.memo``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, TypeGuard

from kproxy.model.memo import Memo

DNS1123_LABEL_MAX_LENGTH: Final = 63
DNS1123_SUBDOMAIN_MAX_LENGTH: Final = 253
LABEL_VALUE_MAX_LENGTH: Final = 63
QUALIFIED_NAME_MAX_LENGTH: Final = 63
IANA_SVC_NAME_MAX_LENGTH: Final = 15

DNS1123_LABEL: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?", re.ASCII)
DNS1123_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*", re.ASCII
)
DNS1035_LABEL: Final = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?", re.ASCII)
# The name part of a qualified name, and a non-empty label value.
QUALIFIED_NAME_PART: Final = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", re.ASCII)
IANA_SVC_NAME_CHARS: Final = re.compile(r"[-a-z0-9]+", re.ASCII)
_LETTER: Final = re.compile(r"[a-z]", re.ASCII)

_CACHE_LIMIT: Final = 50_000


def _string_check(check: Callable[[str], bool]) -> Callable[[object], TypeGuard[str]]:
    """``check`` for any value (only strings can pass), memoised."""
    memoised = Memo(check, _CACHE_LIMIT)
    known = memoised.known  # read directly: the hot path is a hit, one dict lookup

    def is_valid(value: object) -> TypeGuard[str]:
        if type(value) is not str:
            return False
        answer = known.get(value)
        return memoised(value) if answer is None else answer

    is_valid.__doc__ = check.__doc__
    return is_valid


def _dns1123_label(value: str) -> bool:
    """RFC 1123 label: namespaces, EndpointSlice and Service port names, hostnames."""
    return len(value) <= DNS1123_LABEL_MAX_LENGTH and DNS1123_LABEL.fullmatch(value) is not None


def _dns1123_subdomain(value: str) -> bool:
    """RFC 1123 subdomain: EndpointSlice and Node names, label-key prefixes."""
    return (
        len(value) <= DNS1123_SUBDOMAIN_MAX_LENGTH
        and DNS1123_SUBDOMAIN.fullmatch(value) is not None
    )


def _dns1035_label(value: str) -> bool:
    """RFC 1035 label: Service names (an RFC 1123 label starting with a letter)."""
    return len(value) <= DNS1123_LABEL_MAX_LENGTH and DNS1035_LABEL.fullmatch(value) is not None


def _iana_svc_name(value: str) -> bool:
    """IANA_SVC_NAME (RFC 6335): named target ports. At most 15 characters, lower-case
    alphanumerics and '-', at least one letter, no leading, trailing or double '-'."""
    return (
        len(value) <= IANA_SVC_NAME_MAX_LENGTH
        and IANA_SVC_NAME_CHARS.fullmatch(value) is not None
        and _LETTER.search(value) is not None
        and not value.startswith("-")
        and not value.endswith("-")
        and "--" not in value
    )


def _qualified_name(value: str) -> bool:
    """A label key: an optional DNS subdomain prefix and '/', then a 63-character name."""
    prefix, slash, name = value.rpartition("/")
    if slash and not _dns1123_subdomain(prefix):
        return False
    return (
        len(name) <= QUALIFIED_NAME_MAX_LENGTH
        and QUALIFIED_NAME_PART.fullmatch(name) is not None
    )


def _label_value(value: str) -> bool:
    """A label value: empty, or at most 63 alphanumerics, '-', '_' and '.', starting and
    ending with an alphanumeric."""
    return value == "" or (
        len(value) <= LABEL_VALUE_MAX_LENGTH and QUALIFIED_NAME_PART.fullmatch(value) is not None
    )


is_dns1123_label: Final = _string_check(_dns1123_label)
is_dns1123_subdomain: Final = _string_check(_dns1123_subdomain)
is_dns1035_label: Final = _string_check(_dns1035_label)
is_iana_svc_name: Final = _string_check(_iana_svc_name)
is_qualified_name: Final = _string_check(_qualified_name)
is_label_value: Final = _string_check(_label_value)
