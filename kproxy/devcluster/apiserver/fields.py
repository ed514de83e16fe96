"""The fields each kind has, so unknown ones are dropped or rejected as a real server does.

A real server decodes into typed structs: unknown fields never reach storage. Depending on
the request's ``fieldValidation`` they are dropped silently (Ignore), dropped with a warning
(Warn, the default) or make the request fail (Strict, what kubectl sends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

# A field whose content is not checked below it (maps such as labels, or parts not modelled).
FREE = None


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape


Shape = Union[None, "Fields", ListOf]
Fields = dict[str, Shape]


def fields(*names: str, **nested: Shape) -> Fields:
    """Known field names (free-form content) plus fields with a known structure."""
    known: Fields = dict.fromkeys(names, FREE)
    known.update(nested)
    return known


OBJECT_META = fields(
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


def top_level(**kind_fields: Shape) -> Fields:
    return {"apiVersion": FREE, "kind": FREE, "metadata": OBJECT_META, **kind_fields}


def unknown_fields(value: Any, shape: Shape, path: str = "") -> list[str]:
    """Paths of the fields in ``value`` that ``shape`` does not know (``spec.ports[0].x``)."""
    if shape is None:
        return []
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return []
        found: list[str] = []
        for index, item in enumerate(value):
            found += unknown_fields(item, shape.item, f"{path}[{index}]")
        return found
    if not isinstance(value, dict):
        return []
    found = []
    for key, child in value.items():
        child_path = f"{path}.{key}" if path else str(key)
        if key not in shape:
            found.append(child_path)
        else:
            found += unknown_fields(child, shape[key], child_path)
    return found


def drop_unknown(value: Any, shape: Shape) -> None:
    """Remove, in place, every field ``shape`` does not know."""
    if shape is None:
        return
    if isinstance(shape, ListOf):
        if isinstance(value, list):
            for item in value:
                drop_unknown(item, shape.item)
        return
    if not isinstance(value, dict):
        return
    for key in [key for key in value if key not in shape]:
        del value[key]
    for key, child in value.items():
        drop_unknown(child, shape[key])
