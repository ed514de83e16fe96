"""Namespaces: cluster-scoped, always Active here (nothing holds finalizers)."""

from __future__ import annotations

from kproxy.devcluster.apiserver.allocators import Reservations
from kproxy.devcluster.apiserver.fields import fields, top_level
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.patch import ListMerge
from kproxy.devcluster.apiserver.resources import NAMESPACES
from kproxy.devcluster.apiserver.validation import FieldError, dns_label_problems

# Set by the server on every namespace so that selectors can pick namespaces by name.
NAME_LABEL = "kubernetes.io/metadata.name"
# Namespaces that a server refuses to delete.
UNDELETABLE = frozenset({"default", "kube-system", "kube-public"})


class NamespaceRules(KindRules):
    known_fields = top_level(spec=fields("finalizers"), status=None)
    patch_lists = {"status.conditions": ListMerge("type")}

    def __init__(self) -> None:
        super().__init__(NAMESPACES)

    def name_problems(self, name: str) -> list[str]:
        return dns_label_problems(name)

    def _stamp(self, body: JsonObject) -> None:
        metadata = body["metadata"]
        metadata["labels"] = {**(metadata.get("labels") or {}), NAME_LABEL: metadata["name"]}
        spec = body.get("spec")
        if not isinstance(spec, dict):
            spec = body["spec"] = {}
        spec.setdefault("finalizers", ["kubernetes"])
        body["status"] = {"phase": "Active"}

    def prepare_create(self, body: JsonObject, reservations: Reservations) -> list[FieldError]:
        self._stamp(body)
        return []

    def prepare_update(
        self, body: JsonObject, old: JsonObject, reservations: Reservations
    ) -> list[FieldError]:
        self._stamp(body)
        return []
