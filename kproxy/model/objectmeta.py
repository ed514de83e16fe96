"""What every object parser shares: reading metadata, reporting problems, small value checks.

A parser reads an object's metadata with ``read_metadata`` (a whole-object rejection when
it is unusable), collects its problems in an ``ObjectProblems``, and uses ``is_object``,
``port_number`` and ``describe`` for the checks and messages common to all kinds. Checks
deep inside a parser raise ``Invalid``; the parser turns it into one whole-object
rejection (the API server would have refused the object, so no part of it is used).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard, TypeVar

from kproxy.model.formats import (
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_value,
    is_qualified_name,
)
from kproxy.model.types import Parsed, Protocol, Rejection, RejectReason

T = TypeVar("T")

# Names longer than a DNS subdomain are cut short in rejections (they are logged).
MAX_NAME_LENGTH: Final = 253
# Lists the API server does not bound (labels, service ports, external IPs, ingress
# entries, source ranges, node addresses, taints) are read up to this many entries; an
# object with more is rejected, so that no object can make memory or rules grow without
# limit. Far beyond any real object (etcd's 1.5 MB object limit allows a few thousand).
MAX_UNBOUNDED_LIST: Final = 1000

_SHORT_REPR: Final = reprlib.Repr()
_SHORT_REPR.maxstring = 80
_SHORT_REPR.maxother = 80
_SHORT_REPR.maxlong = 40


class Invalid(Exception):
    """A check failed at ``field``: the whole object is rejected there."""

    def __init__(self, field: str, reason: str, code: RejectReason) -> None:
        super().__init__(field, reason, code)
        self.field = field
        self.reason = reason
        self.code = code


class ObjectProblems:
    """Collects the rejections for one object, all naming its kind, namespace and name."""

    __slots__ = ("kind", "name", "namespace", "rejections")

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.rejections: list[Rejection] = []

    def ignore(self, field: str, reason: str, code: RejectReason = RejectReason.IGNORED) -> None:
        """Record that one part of the object is not used (the API server accepts it, but
        kube-proxy ignores it); the rest is still used."""
        self.rejections.append(
            Rejection(self.kind, self.namespace, self.name, field, reason, False, code)
        )

    def drop(self, field: str, reason: str, code: RejectReason) -> Parsed[Any]:
        """Record that the whole object is skipped, and return its (empty) result. Earlier
        field-level notes are left out: one rejected object gives one line."""
        rejection = Rejection(self.kind, self.namespace, self.name, field, reason, True, code)
        return Parsed(None, (rejection,))

    def drop_invalid(self, error: Invalid) -> Parsed[Any]:
        return self.drop(error.field, error.reason, error.code)

    def result(self, value: T) -> Parsed[T]:
        return Parsed(value, tuple(self.rejections))


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    namespace: str
    name: str
    labels: Mapping[str, Any]
    annotations: Mapping[str, Any]
    deletion_requested: bool


_EMPTY: Final[Mapping[str, Any]] = {}
# A syntax check and how it is described in a rejection.
NameRule = tuple[Callable[[object], TypeGuard[str]], str]
SUBDOMAIN_NAME: Final[NameRule] = (is_dns1123_subdomain, "DNS-1123 subdomain")


def read_metadata(
    obj: object,
    kind: str,
    *,
    namespaced: bool,
    name_rule: NameRule | None = None,
) -> ObjectMeta | Parsed[Any]:
    """The metadata kproxy uses, or a whole-object rejection when it is unusable.

    ``name_rule`` is the syntax check for metadata.name and its description; namespaces
    are DNS-1123 labels. Labels are only checked to be an object here: parsers check their
    syntax (``check_labels``) after deciding whether they serve the object at all.
    """
    if not is_object(obj):
        return ObjectProblems(kind, "", "").drop(
            "(object)", f"not an object: {type(obj).__name__}", RejectReason.WRONG_TYPE
        )
    metadata = obj.get("metadata")
    if not is_object(metadata):
        return ObjectProblems(kind, "", "").drop(
            "metadata", "missing or not an object", RejectReason.WRONG_TYPE
        )
    raw_namespace = metadata.get("namespace") if namespaced else ""
    name = metadata.get("name")
    problems = ObjectProblems(kind, _printable(raw_namespace), _printable(name))
    is_name, rule = name_rule or SUBDOMAIN_NAME
    if not is_name(name):
        return problems.drop("metadata.name", _name_problem(name, rule), _name_code(name))
    namespace = ""
    if namespaced:
        if not is_dns1123_label(raw_namespace):
            return problems.drop(
                "metadata.namespace",
                _name_problem(raw_namespace, "DNS-1123 label"),
                _name_code(raw_namespace),
            )
        namespace = raw_namespace
    labels = metadata.get("labels")
    if labels is None:
        labels = _EMPTY
    elif not is_object(labels):
        return problems.drop("metadata.labels", "not an object", RejectReason.WRONG_TYPE)
    annotations = metadata.get("annotations")
    if not is_object(annotations):
        annotations = _EMPTY
    return ObjectMeta(
        namespace, name, labels, annotations, metadata.get("deletionTimestamp") is not None
    )


def check_labels(labels: Mapping[str, Any]) -> None:
    """Label keys are qualified names, values label values (strings), as the API requires."""
    if len(labels) > MAX_UNBOUNDED_LIST:
        raise Invalid("metadata.labels", f"more than {MAX_UNBOUNDED_LIST} labels",
                      RejectReason.TOO_MANY)
    for key, value in labels.items():
        if not is_qualified_name(key):
            raise Invalid(f"metadata.labels[{describe(key)}]", "not a qualified name",
                          RejectReason.INVALID_LABEL)
        if not is_label_value(value):
            raise Invalid(f"metadata.labels[{key}]", f"not a label value: {describe(value)}",
                          RejectReason.INVALID_LABEL)


def check_name(
    value: object, path: str, is_name: Callable[[object], TypeGuard[str]], rule: str
) -> str:
    """``value`` if it is a string of the given syntax, else ``Invalid``."""
    if not is_name(value):
        raise Invalid(path, _name_problem(value, rule), _name_code(value))
    return value


def read_list(container: Mapping[str, Any], key: str, path: str, limit: int) -> list[Any]:
    """container[key] as a list (absent: empty), at most ``limit`` entries long."""
    raw = container.get(key)
    if raw is None:
        return []
    if type(raw) is not list:
        raise Invalid(path, "not a list", RejectReason.WRONG_TYPE)
    if len(raw) > limit:
        raise Invalid(path, f"{len(raw)} entries, more than {limit}", RejectReason.TOO_MANY)
    return raw


def is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether a value is a JSON object. Checks for dict first: the ABC check alone is
    several times slower, and this runs for every endpoint of every slice."""
    return type(value) is dict or isinstance(value, Mapping)


def _name_problem(value: object, rule: str) -> str:
    if value is None:
        return "missing"
    if type(value) is not str:
        return f"not a string: {type(value).__name__}"
    return "empty" if not value else f"not a {rule}: {describe(value)}"


def _name_code(value: object) -> RejectReason:
    if value is None or value == "":
        return RejectReason.MISSING
    return RejectReason.INVALID_NAME if type(value) is str else RejectReason.WRONG_TYPE


def _printable(value: object) -> str:
    """A name as it can appear in a rejection: strings only, bounded for logs."""
    if type(value) is not str:
        return ""
    return value if len(value) <= MAX_NAME_LENGTH else value[:MAX_NAME_LENGTH] + "..."


def port_number(value: object) -> int | None:
    """A TCP/UDP/SCTP port number (1-65535), or None; JSON booleans are not numbers."""
    if type(value) is int and 0 < value < 65536:
        return value
    return None


def describe(value: object) -> str:
    """A short rendering of a bad value for a rejection reason; never raises, even for
    integers too long to print or absurdly nested lists."""
    try:
        return _SHORT_REPR.repr(value)
    except (ValueError, RecursionError):
        return f"<unprintable {type(value).__name__}>"



_PROTOCOLS: Final[Mapping[object, Protocol]] = {p.value: p for p in Protocol}


def read_port_identity(
    raw: Mapping[str, Any], path: str, names: set[str]
) -> tuple[str, Protocol]:
    """The (name, protocol) of a Service or EndpointSlice ports[] entry, with the API
    server's defaults ("" and TCP). Names are empty or DNS-1123 labels, unique among
    ``names`` (which collects them); anything else is ``Invalid``."""
    name = raw.get("name")
    if name is None:
        name = ""
    elif name != "":
        name = check_name(name, f"{path}.name", is_dns1123_label, "DNS-1123 label")
    if name in names:
        raise Invalid(f"{path}.name", f"duplicate port name {name!r}", RejectReason.DUPLICATE)
    names.add(name)
    raw_protocol = raw.get("protocol")
    if raw_protocol is None:
        return name, Protocol.TCP
    protocol = _PROTOCOLS.get(raw_protocol) if type(raw_protocol) is str else None
    if protocol is None:
        raise Invalid(f"{path}.protocol", f"unsupported protocol {describe(raw_protocol)}",
                      RejectReason.UNSUPPORTED_VALUE)
    return name, protocol
