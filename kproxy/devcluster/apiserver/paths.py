"""Resource URLs: which kind, namespace, object and subresource a request path names.

/api/v1/services                                  all Services (every namespace)
/api/v1/namespaces/{ns}/services[/{name}[/status]]
/api/v1/nodes[/{name}[/status]]                   cluster-scoped kinds
/api/v1/namespaces[/{name}[/status]]              Namespaces themselves
/apis/discovery.k8s.io/v1/...                     the same shapes for a named group
/api/v1/watch/...                                 the old watch prefix, any of the above
"""

from __future__ import annotations

from dataclasses import dataclass

from kproxy.devcluster.apiserver.resources import ResourceType, find_by_plural


@dataclass(frozen=True, slots=True)
class ResourcePath:
    resource: ResourceType
    namespace: str | None  # None: every namespace, or a cluster-scoped kind
    name: str | None  # None: the collection
    subresource: str | None = None
    legacy_watch: bool = False


def _group_version(segments: list[str]) -> tuple[str, str, list[str]] | None:
    if len(segments) >= 2 and segments[0] == "api":
        return "", segments[1], segments[2:]
    if len(segments) >= 3 and segments[0] == "apis":
        return segments[1], segments[2], segments[3:]
    return None


def parse_resource_path(path: str) -> ResourcePath | None:
    segments = [segment for segment in path.strip("/").split("/")]
    if any(not segment for segment in segments):
        return None
    prefix = _group_version(segments)
    if prefix is None:
        return None
    group, version, rest = prefix
    legacy_watch = bool(rest) and rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    if not rest:
        return None

    if rest[0] == "namespaces" and len(rest) >= 3:
        namespaced = find_by_plural(group, version, rest[2])
        if namespaced is not None and namespaced.namespaced and len(rest) <= 5:
            return ResourcePath(
                namespaced,
                rest[1],
                rest[3] if len(rest) >= 4 else None,
                rest[4] if len(rest) == 5 else None,
                legacy_watch,
            )
    resource = find_by_plural(group, version, rest[0])
    if resource is None or len(rest) > 3:
        return None
    return ResourcePath(
        resource,
        None,
        rest[1] if len(rest) >= 2 else None,
        rest[2] if len(rest) == 3 else None,
        legacy_watch,
    )
