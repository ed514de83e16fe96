"""Manifest files for ``--load``: YAML documents, or v1 ``List`` objects, of API objects."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class ManifestError(ValueError):
    pass


def flatten(documents: Iterable[Any]) -> list[dict[str, Any]]:
    """API objects from parsed documents: empty documents skipped, ``List`` items unpacked."""
    objects: list[dict[str, Any]] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(f"a manifest document must be an object, not {document!r:.60}")
        kind = str(document.get("kind", ""))
        if kind == "List" or (kind.endswith("List") and "items" in document):
            objects.extend(flatten(document.get("items") or []))
        else:
            objects.append(document)
    return objects


def read_manifests(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    source = Path(path)
    size = source.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source} is {size} bytes; the limit is {MAX_MANIFEST_BYTES}")
    with open(source, encoding="utf-8") as handle:
        try:
            return flatten(yaml.safe_load_all(handle))
        except yaml.YAMLError as error:
            raise ManifestError(f"{source}: {error}") from None
