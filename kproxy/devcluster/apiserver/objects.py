"""Stored objects: a body that is never mutated once stored, and its JSON, encoded once.

Every read (get, list, watch) reuses the encoded bytes, so serving 10,000 objects is a join,
not 10,000 ``json.dumps`` calls, and nothing is deep-copied per request.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]
# (namespace, name); namespace is "" for cluster-scoped objects. Sorting these gives the
# order a real server lists in (its storage keys are namespace/name).
ObjectKey = tuple[str, str]


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class StoredObject:
    body: JsonObject
    raw: bytes
    resource_version: int

    @classmethod
    def seal(cls, body: JsonObject, resource_version: int) -> StoredObject:
        return cls(body, encode(body), resource_version)

    @property
    def metadata(self) -> JsonObject:
        meta: JsonObject = self.body["metadata"]
        return meta

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def key(self) -> ObjectKey:
        return (self.namespace, self.name)

    @property
    def labels(self) -> dict[str, str]:
        labels = self.metadata.get("labels")
        if type(labels) is dict and all(
            type(key) is str and type(value) is str for key, value in labels.items()
        ):
            checked: dict[str, str] = labels
            return checked
        if not isinstance(labels, dict):
            return {}
        # Stored without validation: only the string labels can be selected on.
        return {k: v for k, v in labels.items() if type(k) is str and type(v) is str}

    def mutable_copy(self) -> JsonObject:
        """A deep copy to build the next version from (one object per write, never a list)."""
        return copy.deepcopy(self.body)

    def restamped(self, resource_version: int) -> StoredObject:
        """The same content carrying another resourceVersion (deletion events report theirs)."""
        body = dict(self.body)
        body["metadata"] = {**self.metadata, "resourceVersion": str(resource_version)}
        return StoredObject.seal(body, resource_version)
