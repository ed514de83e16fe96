"""Content negotiation: which representation a client asked for in its Accept header.

kubectl asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` first (server-side
printing) and plain JSON as a fallback; metadata-only clients ask for
``as=PartialObjectMetadata[List]``. Anything else acceptable gets plain JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kproxy.devcluster.apiserver.errors import not_acceptable

META_GROUP = "meta.k8s.io"
META_VERSIONS = ("v1", "v1beta1")


class Representation(enum.Enum):
    OBJECT = "object"
    TABLE = "table"
    METADATA = "metadata"


@dataclass(frozen=True, slots=True)
class Negotiated:
    representation: Representation
    meta_version: str = "v1"  # meta.k8s.io version for Table / PartialObjectMetadata


def _media_types(accept: str) -> list[tuple[str, dict[str, str]]]:
    parsed = []
    for entry in accept.split(","):
        parts = [part.strip() for part in entry.split(";")]
        if not parts[0]:
            continue
        params = {}
        for part in parts[1:]:
            key, _, value = part.partition("=")
            params[key.strip().lower()] = value.strip()
        parsed.append((parts[0].lower(), params))
    return parsed


def negotiate(accept: str | None, *, allow_transforms: bool) -> Negotiated:
    """The first representation in the client's order that this server can produce."""
    if not accept:
        return Negotiated(Representation.OBJECT)
    for media_type, params in _media_types(accept):
        if media_type not in ("application/json", "application/*", "*/*"):
            continue
        wanted = params.get("as")
        if wanted is None:
            return Negotiated(Representation.OBJECT)
        if not allow_transforms or params.get("g") != META_GROUP:
            continue
        version = params.get("v", "v1")
        if version not in META_VERSIONS:
            continue
        if wanted == "Table":
            return Negotiated(Representation.TABLE, version)
        if wanted in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return Negotiated(Representation.METADATA, version)
    raise not_acceptable(accept)
