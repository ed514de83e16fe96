"""Who is asking, and may they: bearer tokens, RBAC, and 401/403 answers as Kubernetes
gives them.

Off unless the server is given an :class:`AccessControl`. Then every request over TCP must
carry ``Authorization: Bearer <token>`` of a known user (no header: ``system:anonymous``;
an unknown token: 401 Unauthorized) and be allowed by the RBAC policy (else 403 Forbidden,
with the Status body the Kubernetes API server sends). Requests over the Unix socket are the
cluster admin's (``system:masters``): that socket is how a test driver or the demo, on the
same machine, sets up objects. Every refusal is counted and remembered, so a test can assert
that a client made no request outside its role.

A token may carry an expiry (see :mod:`kproxy.devcluster.apiserver.tokenrotation`): past
it, the token is answered 401 as the API server answers an expired bound ServiceAccount token.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.paths import ResourcePath
from kproxy.devcluster.apiserver.rbac import (
    ANONYMOUS,
    MASTERS_GROUP,
    PathRequest,
    Policy,
    Request,
    ResourceRequest,
    UserInfo,
)

log = logging.getLogger(__name__)

ADMIN = UserInfo("kubernetes-admin", (MASTERS_GROUP, "system:authenticated"))
# Where the refusal counts can be read (by anyone: it is a test control, not an API).
REFUSALS_PATH = "/kproxy/refusals"
_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclass(frozen=True, slots=True)
class Refusal:
    user: str
    verb: str
    what: str  # "services in default", "path /foo"
    code: int


@dataclass
class AccessControl:
    policy: Policy
    tokens: dict[str, UserInfo] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    # token -> when it stops being accepted, on ``clock``; tokens not listed never expire.
    expiries: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def add_user(self, name: str, token: str | None = None, ttl: float | None = None) -> str:
        """Make ``token`` (a new random one if None) identify user ``name`` (for ``ttl``
        seconds from now, if given); returns it. The user's earlier tokens stay valid."""
        token = token or secrets.token_urlsafe(24)
        self.tokens[token] = UserInfo.authenticated(name)
        if ttl is not None:
            self.expiries[token] = self.clock() + ttl
        return token

    def token_of(self, name: str) -> str | None:
        """The user's newest token."""
        return next((t for t, user in reversed(self.tokens.items()) if user.name == name), None)

    @property
    def forbidden_count(self) -> int:
        return sum(1 for refusal in self.refusals if refusal.code == 403)

    @property
    def unauthorized_count(self) -> int:
        return sum(1 for refusal in self.refusals if refusal.code == 401)

    def authenticate(self, authorization: str | None, *, local_socket: bool) -> UserInfo | None:
        """The requesting user; None for a token nobody has (answered 401)."""
        if local_socket:
            return ADMIN
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if self.expired(token):
            return None
        return self.tokens.get(token)

    def expired(self, token: str) -> bool:
        expiry = self.expiries.get(token)
        return expiry is not None and self.clock() >= expiry

    def check(
        self,
        *,
        method: str,
        path: str,
        route: ResourcePath | None,
        watch: bool,
        authorization: str | None,
        local_socket: bool,
    ) -> ApiError | None:
        """None when the request may go ahead, else the error to answer with."""
        if path.rstrip("/") == REFUSALS_PATH:
            return None
        request = request_attributes(method, path, route, watch=watch)
        user = self.authenticate(authorization, local_socket=local_socket)
        if user is None:
            token = (authorization or "").partition(" ")[2].strip()
            who = "(expired token)" if self.expired(token) else "(unknown token)"
            self._refuse(Refusal(who, request.verb, _describe(request), 401))
            return ApiError(401, "Unauthorized", "Unauthorized")
        if self.policy.allows(user, request):
            return None
        self._refuse(Refusal(user.name, request.verb, _describe(request), 403))
        return forbidden(user, request)

    def report(self) -> dict[str, object]:
        return {
            "forbidden": self.forbidden_count,
            "unauthorized": self.unauthorized_count,
            "refusals": [
                {"user": r.user, "verb": r.verb, "what": r.what, "code": r.code}
                for r in self.refusals
            ],
        }

    def _refuse(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)
        log.warning("refused (%d): %s may not %s %s",
                    refusal.code, refusal.user, refusal.verb, refusal.what)


def request_attributes(
    method: str, path: str, route: ResourcePath | None, *, watch: bool
) -> Request:
    """The RBAC verb and resource of an HTTP request, as the API server derives them."""
    method = method.upper()
    if route is None:
        return PathRequest("get" if method == "HEAD" else method.lower(), path)
    if method in ("GET", "HEAD") and (watch or route.legacy_watch):
        verb = "watch"
    elif method in ("GET", "HEAD"):
        verb = "list" if route.name is None else "get"
    elif method == "DELETE":
        verb = "deletecollection" if route.name is None else "delete"
    else:
        verb = _WRITE_VERBS.get(method, method.lower())
    resource = route.resource
    namespace = route.namespace or ""
    if resource.plural == "namespaces" and route.name is not None:
        namespace = route.name  # a Namespace is its own namespace, for RBAC
    return ResourceRequest(
        verb, resource.group, resource.plural, namespace, route.name or "",
        route.subresource or "",
    )


def forbidden(user: UserInfo, request: Request) -> ApiError:
    """403 with the message and details the Kubernetes API server gives."""
    if isinstance(request, PathRequest):
        return ApiError(
            403, "Forbidden",
            f'forbidden: User "{user.name}" cannot {request.verb} path "{request.path}"',
            {},
        )
    resource = request.resource
    qualified = f"{resource}.{request.api_group}" if request.api_group else resource
    target = f"{resource}/{request.subresource}" if request.subresource else resource
    scope = (
        f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    )
    why = (
        f'User "{user.name}" cannot {request.verb} resource "{target}" in API group '
        f'"{request.api_group}" {scope}'
    )
    subject = f'{qualified} "{request.name}"' if request.name else qualified
    details: dict[str, object] = {}
    if request.name:
        details["name"] = request.name
    if request.api_group:
        details["group"] = request.api_group
    details["kind"] = resource
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {why}", details)


def _describe(request: Request) -> str:
    if isinstance(request, PathRequest):
        return f"path {request.path}"
    group = f".{request.api_group}" if request.api_group else ""
    where = f" in {request.namespace}" if request.namespace else ""
    name = f" {request.name}" if request.name else ""
    sub = f"/{request.subresource}" if request.subresource else ""
    return f"{request.resource}{group}{sub}{name}{where}"
