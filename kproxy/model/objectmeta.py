"""What every object parser shares: reading metadata, reporting problems, small value checks.

A parser reads an object's metadata with ``read_metadata`` (a whole-object rejection when
it is unusable), collects its problems in an ``ObjectProblems``, and uses ``is_object``,
``port_number`` and ``describe`` for the checks and messages common to all kinds.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard, TypeVar

from kproxy.model.types import Parsed, Protocol, Rejection

T = TypeVar("T")

# metadata.name / namespace and node names are DNS subdomains at most; port names and
# traffic distribution values are short identifiers. Anything longer is not from a valid
# object and is refused before it reaches logs, rule comments or chain-name hashing.
MAX_NAME_LENGTH: Final = 253
MAX_PORT_NAME_LENGTH: Final = 63

_SHORT_REPR: Final = reprlib.Repr()
_SHORT_REPR.maxstring = 80
_SHORT_REPR.maxother = 80
_SHORT_REPR.maxlong = 40


class ObjectProblems:
    """Collects the rejections for one object, all naming its kind, namespace and name."""

    __slots__ = ("kind", "name", "namespace", "rejections")

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.rejections: list[Rejection] = []

    def ignore(self, field: str, reason: str) -> None:
        """Record that one part of the object was skipped; the rest is still used."""
        self.rejections.append(Rejection(self.kind, self.namespace, self.name, field, reason))

    def drop(self, field: str, reason: str) -> Parsed[Any]:
        """Record that the whole object is skipped, and return its (empty) result."""
        self.rejections.append(
            Rejection(self.kind, self.namespace, self.name, field, reason, whole_object=True)
        )
        return Parsed(None, tuple(self.rejections))

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


def read_metadata(obj: object, kind: str, *, namespaced: bool) -> ObjectMeta | Parsed[Any]:
    """The metadata kproxy uses, or a whole-object rejection when it is unusable."""
    if not is_object(obj):
        return ObjectProblems(kind, "", "").drop("(object)", f"not an object: {type(obj).__name__}")
    metadata = obj.get("metadata")
    if not is_object(metadata):
        return ObjectProblems(kind, "", "").drop("metadata", "missing or not an object")
    raw_namespace = metadata.get("namespace") if namespaced else ""
    name = metadata.get("name")
    problems = ObjectProblems(kind, _printable(raw_namespace), _printable(name))
    if not _is_name(name):
        return problems.drop("metadata.name", _name_problem(name))
    namespace = ""
    if namespaced:
        if not _is_name(raw_namespace):
            return problems.drop("metadata.namespace", _name_problem(raw_namespace))
        namespace = raw_namespace
    labels = metadata.get("labels")
    if labels is None:
        labels = _EMPTY
    elif not is_object(labels):
        return problems.drop("metadata.labels", "not an object")
    annotations = metadata.get("annotations")
    if not is_object(annotations):
        annotations = _EMPTY
    return ObjectMeta(
        namespace, name, labels, annotations, metadata.get("deletionTimestamp") is not None
    )


def is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether a value is a JSON object. Checks for dict first: the ABC check alone is
    several times slower, and this runs for every endpoint of every slice."""
    return type(value) is dict or isinstance(value, Mapping)


def _is_name(value: object) -> TypeGuard[str]:
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH


def _name_problem(value: object) -> str:
    if value is None:
        return "missing"
    if type(value) is not str:
        return f"not a string: {type(value).__name__}"
    return "empty" if not value else f"longer than {MAX_NAME_LENGTH} characters"


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
    raw: Mapping[str, Any], path: str, problems: ObjectProblems
) -> tuple[str, Protocol] | None:
    """The (name, protocol) of a Service or EndpointSlice ports[] entry, with the API
    server's defaults ("" and TCP); None, with the problem recorded, when either is bad."""
    name = raw.get("name")
    if name is None:
        name = ""
    elif type(name) is not str or len(name) > MAX_PORT_NAME_LENGTH:
        problems.ignore(f"{path}.name", f"not a port name: {describe(name)}")
        return None
    raw_protocol = raw.get("protocol")
    if raw_protocol is None:
        return name, Protocol.TCP
    protocol = _PROTOCOLS.get(raw_protocol) if type(raw_protocol) is str else None
    if protocol is None:
        problems.ignore(f"{path}.protocol", f"unsupported protocol {describe(raw_protocol)}")
        return None
    return name, protocol
