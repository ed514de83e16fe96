"""The resource types this server serves, described the way discovery and URLs name them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kproxy.devcluster.apiserver.errors import GroupResource

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    has_status: bool = False
    # Whether DELETE answers with the deleted object (else with a Success Status).
    returns_deleted_object: bool = False
    # Field selector labels beyond metadata.name / metadata.namespace, with the value an
    # object that leaves the field unset has.
    extra_selectable_fields: tuple[tuple[str, str], ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def group_resource(self) -> GroupResource:
        return GroupResource(self.plural, self.group)

    @property
    def selectable_fields(self) -> tuple[str, ...]:
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + tuple(path for path, _ in self.extra_selectable_fields)

    def field_values(self, body: Mapping[str, Any]) -> dict[str, str]:
        """The values field selectors compare against, rendered as the API renders them."""
        metadata = body.get("metadata") or {}
        values = {"metadata.name": str(metadata.get("name", ""))}
        if self.namespaced:
            values["metadata.namespace"] = str(metadata.get("namespace", ""))
        for path, default in self.extra_selectable_fields:
            value: Any = body
            for part in path.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is None:
                values[path] = default
            elif isinstance(value, bool):
                values[path] = "true" if value else "false"
            else:
                values[path] = str(value)
        return values

    def supports(self, verb: str) -> bool:
        return verb in self.verbs


SERVICES = ResourceType(
    group="",
    version="v1",
    kind="Service",
    plural="services",
    singular="service",
    namespaced=True,
    short_names=("svc",),
    categories=("all",),
    # Services have never offered deletecollection (their IPs and ports are released one by one).
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    has_status=True,
    returns_deleted_object=True,
)

NODES = ResourceType(
    group="",
    version="v1",
    kind="Node",
    plural="nodes",
    singular="node",
    namespaced=False,
    short_names=("no",),
    has_status=True,
    extra_selectable_fields=(("spec.unschedulable", "false"),),
)

NAMESPACES = ResourceType(
    group="",
    version="v1",
    kind="Namespace",
    plural="namespaces",
    singular="namespace",
    namespaced=False,
    short_names=("ns",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    has_status=True,
    extra_selectable_fields=(("status.phase", ""),),
    returns_deleted_object=True,
)

ENDPOINT_SLICES = ResourceType(
    group="discovery.k8s.io",
    version="v1",
    kind="EndpointSlice",
    plural="endpointslices",
    singular="endpointslice",
    namespaced=True,
)

RESOURCE_TYPES: tuple[ResourceType, ...] = (SERVICES, NODES, NAMESPACES, ENDPOINT_SLICES)


def group_versions() -> list[tuple[str, str]]:
    """(group, version) pairs served, in a stable order, core group first."""
    seen: list[tuple[str, str]] = []
    for resource in RESOURCE_TYPES:
        pair = (resource.group, resource.version)
        if pair not in seen:
            seen.append(pair)
    return seen


def resources_in(group: str, version: str) -> list[ResourceType]:
    return [r for r in RESOURCE_TYPES if r.group == group and r.version == version]


def find_by_plural(group: str, version: str, plural: str) -> ResourceType | None:
    for resource in RESOURCE_TYPES:
        if (resource.group, resource.version, resource.plural) == (group, version, plural):
            return resource
    return None


def find_by_kind(api_version: str, kind: str) -> ResourceType | None:
    for resource in RESOURCE_TYPES:
        if resource.api_version == api_version and resource.kind == kind:
            return resource
    return None
