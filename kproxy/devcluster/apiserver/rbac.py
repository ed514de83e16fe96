"""RBAC as the Kubernetes API server evaluates it: Roles and ClusterRoles, their bindings,
and whether a user may perform a request.

Pure: documents in, decisions out. Only what is granted is allowed (RBAC has no deny
rules); a RoleBinding grants its role's rules in its own namespace only. Besides the given
documents, the built-in grants every cluster has apply: ``system:masters`` may do anything,
authenticated users may read discovery, and anyone may read ``/version`` and the health
paths (``system:discovery``, ``system:public-info-viewer``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
MASTERS_GROUP = "system:masters"
AUTHENTICATED_GROUP = "system:authenticated"
UNAUTHENTICATED_GROUP = "system:unauthenticated"
ANONYMOUS_USER = "system:anonymous"
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version", "/version/")
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*")


class RbacError(ValueError):
    """An RBAC document that cannot be used, naming the object and the field."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def authenticated(cls, name: str, *groups: str) -> UserInfo:
        extra: tuple[str, ...] = ()
        if name.startswith("system:serviceaccount:"):
            namespace = name.split(":")[2]
            extra = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}")
        return cls(name, (*groups, *extra, AUTHENTICATED_GROUP))


ANONYMOUS = UserInfo(ANONYMOUS_USER, (UNAUTHENTICATED_GROUP,))


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    verb: str
    api_group: str
    resource: str
    namespace: str = ""  # "" for cluster-scoped kinds and all-namespace requests
    name: str = ""
    subresource: str = ""


@dataclass(frozen=True, slots=True)
class PathRequest:
    verb: str  # get, post, put, ...: the HTTP method in lower case
    path: str


Request = ResourceRequest | PathRequest


@dataclass(frozen=True, slots=True)
class PolicyRule:
    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    def allows(self, request: Request) -> bool:
        if not _matches(self.verbs, request.verb):
            return False
        if isinstance(request, PathRequest):
            return any(
                url == request.path or (url.endswith("*") and request.path.startswith(url[:-1]))
                for url in self.non_resource_urls
            )
        if not _matches(self.api_groups, request.api_group):
            return False
        if not self._allows_resource(request.resource, request.subresource):
            return False
        return not self.resource_names or request.name in self.resource_names

    def _allows_resource(self, resource: str, subresource: str) -> bool:
        combined = f"{resource}/{subresource}" if subresource else resource
        for allowed in self.resources:
            if allowed in ("*", combined):
                return True
            if subresource and allowed in (f"*/{subresource}", f"{resource}/*"):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str  # User, Group or ServiceAccount
    name: str
    namespace: str = ""

    def includes(self, user: UserInfo) -> bool:
        if self.kind == "User":
            return user.name == self.name
        if self.kind == "Group":
            return self.name in user.groups
        return user.name == f"system:serviceaccount:{self.namespace}:{self.name}"


@dataclass(frozen=True, slots=True)
class Grant:
    """The rules one binding gives its subjects; ``namespace`` "" for a ClusterRoleBinding."""

    subjects: tuple[Subject, ...]
    rules: tuple[PolicyRule, ...]
    namespace: str = ""


BUILT_IN_GRANTS = (
    Grant((Subject("Group", MASTERS_GROUP),),
          (PolicyRule(("*",), ("*",), ("*",)), PolicyRule(("*",), non_resource_urls=("*",)))),
    Grant((Subject("Group", AUTHENTICATED_GROUP),),
          (PolicyRule(("get",), non_resource_urls=DISCOVERY_PATHS),)),
    Grant((Subject("Group", AUTHENTICATED_GROUP), Subject("Group", UNAUTHENTICATED_GROUP)),
          (PolicyRule(("get",), non_resource_urls=PUBLIC_PATHS),)),
)


class Policy:
    """Every grant of a set of RBAC documents, plus the built-in ones."""

    def __init__(self, grants: Iterable[Grant], *, built_in: bool = True) -> None:
        self.grants = (*(BUILT_IN_GRANTS if built_in else ()), *grants)

    def allows(self, user: UserInfo, request: Request) -> bool:
        for grant in self.grants:
            if grant.namespace and (
                isinstance(request, PathRequest) or request.namespace != grant.namespace
            ):
                continue
            if any(subject.includes(user) for subject in grant.subjects) and any(
                rule.allows(request) for rule in grant.rules
            ):
                return True
        return False

    @classmethod
    def from_documents(cls, documents: Iterable[Mapping[str, Any]]) -> Policy:
        """Roles, ClusterRoles and their bindings; other kinds (ServiceAccounts) are ignored.

        A binding to a role not among the documents grants nothing, as in a cluster."""
        documents = list(documents)
        roles: dict[tuple[str, str, str], tuple[PolicyRule, ...]] = {}
        for document in documents:
            kind = document.get("kind")
            if kind in ("Role", "ClusterRole"):
                name, namespace = _identity(document)
                scope = namespace if kind == "Role" else ""
                roles[(str(kind), scope, name)] = _rules(document)
        grants: list[Grant] = []
        for document in documents:
            kind = document.get("kind")
            if kind not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            name, namespace = _identity(document)
            scope = namespace if kind == "RoleBinding" else ""
            ref = _field(document, "roleRef", dict)
            ref_kind = _field(ref, "kind", str, document, "roleRef.kind")
            ref_name = _field(ref, "name", str, document, "roleRef.name")
            if ref_kind not in ("Role", "ClusterRole") or (
                ref_kind == "Role" and kind == "ClusterRoleBinding"
            ):
                raise _error(document, "roleRef.kind", f"cannot refer to a {ref_kind}")
            rules = roles.get((ref_kind, scope if ref_kind == "Role" else "", ref_name), ())
            subjects = tuple(
                _subject(document, index, entry, scope)
                for index, entry in enumerate(document.get("subjects") or [])
            )
            grants.append(Grant(subjects, rules, scope))
        return cls(grants)


def _matches(allowed: Sequence[str], value: str) -> bool:
    return "*" in allowed or value in allowed


def _identity(document: Mapping[str, Any]) -> tuple[str, str]:
    metadata = _field(document, "metadata", dict)
    name = _field(metadata, "name", str, document, "metadata.name")
    namespace = metadata.get("namespace") or ""
    if document.get("kind") in ("Role", "RoleBinding") and not namespace:
        raise _error(document, "metadata.namespace", "required for a namespaced kind")
    return name, str(namespace)


def _rules(document: Mapping[str, Any]) -> tuple[PolicyRule, ...]:
    rules: list[PolicyRule] = []
    for index, entry in enumerate(document.get("rules") or []):
        where = f"rules[{index}]"
        if not isinstance(entry, dict):
            raise _error(document, where, "not an object")

        def strings(key: str, entry: dict[str, Any] = entry, where: str = where) -> tuple[str, ...]:
            value = entry.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _error(document, f"{where}.{key}", "must be a list of strings")
            return tuple(value)

        verbs = strings("verbs")
        if not verbs:
            raise _error(document, f"{where}.verbs", "required")
        rules.append(PolicyRule(verbs, strings("apiGroups"), strings("resources"),
                                strings("resourceNames"), strings("nonResourceURLs")))
    return tuple(rules)


def _subject(document: Mapping[str, Any], index: int, entry: object, scope: str) -> Subject:
    where = f"subjects[{index}]"
    if not isinstance(entry, dict):
        raise _error(document, where, "not an object")
    kind = _field(entry, "kind", str, document, f"{where}.kind")
    name = _field(entry, "name", str, document, f"{where}.name")
    if kind not in ("User", "Group", "ServiceAccount"):
        raise _error(document, f"{where}.kind", f"unknown subject kind {kind!r}")
    namespace = str(entry.get("namespace") or (scope if kind == "ServiceAccount" else ""))
    if kind == "ServiceAccount" and not namespace:
        raise _error(document, f"{where}.namespace", "required for a ServiceAccount")
    return Subject(kind, name, namespace)


def _field(
    container: Mapping[str, Any], key: str, expected: type, document: Mapping[str, Any] | None =
    None, where: str | None = None,
) -> Any:
    value = container.get(key)
    if not isinstance(value, expected):
        raise _error(document or container, where or key, f"must be a {expected.__name__}")
    return value


def _error(document: Mapping[str, Any], field: str, reason: str) -> RbacError:
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return RbacError(f"{document.get('kind', 'object')} {name or '(unnamed)'}: {field}: {reason}")
