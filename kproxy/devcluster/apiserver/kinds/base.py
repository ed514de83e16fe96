"""What every kind provides to the store, and the rules shared by all of them."""

from __future__ import annotations

from typing import Any

from kproxy.devcluster.apiserver.allocators import Reservations
from kproxy.devcluster.apiserver.fields import Fields, top_level
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.patch import METADATA_PATCH_SCHEMA, ListMerge, PatchSchema
from kproxy.devcluster.apiserver.resources import ResourceType
from kproxy.devcluster.apiserver.validation import FieldError, dns_subdomain_problems


class KindRules:
    """Defaults, validation and allocation for one kind. The base accepts anything."""

    resource: ResourceType
    # Top-level fields whose change bumps metadata.generation; empty: no generation kept.
    generation_fields: tuple[str, ...] = ()
    patch_lists: dict[str, ListMerge] = {}
    # The fields objects of this kind have; others are dropped (or rejected when strict).
    known_fields: Fields = top_level(spec=None, status=None)

    def __init__(self, resource: ResourceType) -> None:
        self.resource = resource

    @property
    def patch_schema(self) -> PatchSchema:
        return {**METADATA_PATCH_SCHEMA, **self.patch_lists}

    def name_problems(self, name: str) -> list[str]:
        return dns_subdomain_problems(name)

    def prepare_create(self, body: JsonObject, reservations: Reservations) -> list[FieldError]:
        """Default and validate a new object, reserving what it needs; errors leave the
        reservations for the caller to roll back."""
        return []

    def prepare_update(
        self, body: JsonObject, old: JsonObject, reservations: Reservations
    ) -> list[FieldError]:
        return []

    def validate_status(self, body: JsonObject) -> list[FieldError]:
        return []

    def release(self, old: JsonObject, reservations: Reservations) -> None:
        """Give back what a deleted object held."""

    def restore(self, body: JsonObject) -> None:
        """Re-register what a loaded object holds (state files, restarts)."""


def dig(body: Any, *path: str) -> Any:
    """A nested field, or None where any step is missing or not an object."""
    node = body
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
