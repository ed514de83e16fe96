"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge patch is JSON merge patch plus list knowledge per field: some lists are merged
element by element on a key (a Service's ``spec.ports`` on ``port``), some lists of scalars
are merged as sets (``metadata.finalizers``), and all others are replaced whole, as in
Kubernetes. The directives kubectl sends (``$patch``, ``$retainKeys``,
``$setElementOrder/<field>``, ``$deleteFromPrimitiveList/<field>``) are honoured.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_CONTENT_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)


class PatchError(Exception):
    """A patch that cannot be applied; ``code`` is what the server answers (400 or 422)."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ListMerge:
    """How a strategic merge patch combines one list field.

    ``key`` names the field identifying elements of a list of objects; None means a list of
    scalars merged as a set. Lists not described in the schema are replaced whole."""

    key: str | None = None


# Dotted field paths (no list indices: a list element's fields continue the list's path).
PatchSchema = Mapping[str, ListMerge]

METADATA_PATCH_SCHEMA: dict[str, ListMerge] = {
    "metadata.finalizers": ListMerge(),
    "metadata.ownerReferences": ListMerge("uid"),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- JSON patch ----------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_insert: bool) -> int:
    if for_insert and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    limit = len(container) if for_insert else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of bounds", 422)
    return index


def _parent(document: Any, parts: list[str]) -> Any:
    node = document
    for token in parts[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"missing path element {token!r}", 422)
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_insert=False)]
        else:
            raise PatchError(f"cannot descend into a scalar at {token!r}", 422)
    return node


def _get(document: Any, parts: list[str]) -> Any:
    if not parts:
        return document
    parent = _parent(document, parts)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"missing value at {token!r}", 422)
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, for_insert=False)]
    raise PatchError("cannot read from a scalar", 422)


def _add(document: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(document, parts)
    token = parts[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, for_insert=True), value)
    else:
        raise PatchError("cannot add to a scalar", 422)
    return document


def _remove(document: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document", 422)
    parent = _parent(document, parts)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"missing value at {token!r}", 422)
        del parent[token]
    elif isinstance(parent, list):
        del parent[_index(parent, token, for_insert=False)]
    else:
        raise PatchError("cannot remove from a scalar", 422)
    return document


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902, applied to a copy: a failing operation leaves nothing half-applied."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    result = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise PatchError(f"invalid JSON patch operation {operation!r}")
        op = operation["op"]
        parts = _pointer(operation.get("path"))
        if op == "add":
            result = _add(result, parts, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            result = _remove(result, parts)
        elif op == "replace":
            _get(result, parts)
            result = (
                _add(_remove(result, parts), parts, copy.deepcopy(operation.get("value")))
                if parts
                else copy.deepcopy(operation.get("value"))
            )
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from"))
            value = copy.deepcopy(_get(result, source))
            if op == "move":
                result = _remove(result, source)
            result = _add(result, parts, value)
        elif op == "test":
            if _get(result, parts) != operation.get("value"):
                raise PatchError(f"testing value {operation.get('path')} failed", 422)
        else:
            raise PatchError(f"unknown JSON patch operation {op!r}")
    return result


# --- strategic merge patch -----------------------------------------------------------------

_PATCH = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


def strategic_merge_patch(original: Any, patch: Any, schema: PatchSchema) -> Any:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    base = original if isinstance(original, dict) else {}
    merged = _merge_map(base, patch, schema, "")
    if merged is None:
        raise PatchError("a strategic merge patch cannot delete the whole object", 422)
    return merged


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _strip(value: Any, schema: PatchSchema, path: str) -> Any:
    """A patch value about to be stored where nothing was: directives removed."""
    if isinstance(value, dict):
        stripped = _merge_map({}, value, schema, path)
        return {} if stripped is None else stripped
    if isinstance(value, list):
        return [_strip(item, schema, path) for item in value if not _is_directive(item)]
    return value


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {_PATCH}


def _merge_map(
    original: Mapping[str, Any], patch: Mapping[str, Any], schema: PatchSchema, path: str
) -> dict[str, Any] | None:
    directive = patch.get(_PATCH)
    if directive == "delete":
        return None
    if directive == "replace":
        return {
            key: _strip(value, schema, _child(path, key))
            for key, value in patch.items()
            if key != _PATCH and not key.startswith(("$",))
        }
    if directive not in (None, "merge"):
        raise PatchError(f"unknown patch directive {directive!r} at {path or '<root>'}")
    result = dict(original)
    retain = patch.get(_RETAIN_KEYS)
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError(f"{_RETAIN_KEYS} must be a list")
        result = {key: value for key, value in result.items() if key in retain}
    orders: dict[str, Any] = {}
    primitive_deletions: dict[str, Any] = {}
    for key, value in patch.items():
        if key in (_PATCH, _RETAIN_KEYS):
            continue
        if key.startswith(_SET_ORDER):
            orders[key[len(_SET_ORDER) :]] = value
            continue
        if key.startswith(_DELETE_PRIMITIVES):
            primitive_deletions[key[len(_DELETE_PRIMITIVES) :]] = value
            continue
        child = _child(path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            merged = _merge_map(current if isinstance(current, dict) else {}, value, schema, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, schema, child)
        else:
            result[key] = value
    for field, doomed in primitive_deletions.items():
        if isinstance(result.get(field), list) and isinstance(doomed, list):
            result[field] = [item for item in result[field] if item not in doomed]
    for field, order in orders.items():
        if isinstance(result.get(field), list) and isinstance(order, list):
            merge = schema.get(_child(path, field))
            result[field] = _apply_order(result[field], order, merge)
    return result


def _merge_list(original: Any, patch: list[Any], schema: PatchSchema, path: str) -> list[Any]:
    merge = schema.get(path)
    replace = any(
        isinstance(item, dict) and item.get(_PATCH) == "replace" and len(item) == 1
        for item in patch
    )
    if merge is None or replace or not isinstance(original, list):
        return _strip(patch, schema, path)  # type: ignore[no-any-return]
    if merge.key is None:
        result = list(original)
        for item in patch:
            if item not in result:
                result.append(item)
        return result
    key = merge.key
    result = list(original)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"list {path} must hold objects to merge on {key!r}")
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        position = next(
            (
                i
                for i, existing in enumerate(result)
                if isinstance(existing, dict) and existing.get(key) == item[key]
            ),
            None,
        )
        if item.get(_PATCH) == "delete":
            result = [
                existing
                for existing in result
                if not (isinstance(existing, dict) and existing.get(key) == item[key])
            ]
            continue
        if position is None:
            result.append(_strip(item, schema, path))
        else:
            merged = _merge_map(result[position], item, schema, path)
            if merged is not None:
                result[position] = merged
    return result


def _apply_order(items: list[Any], order: list[Any], merge: ListMerge | None) -> list[Any]:
    """Put the elements named in ``order`` in that order; the others keep theirs, after them."""

    def identity(item: Any) -> Any:
        if merge is not None and merge.key is not None and isinstance(item, dict):
            return item.get(merge.key)
        return item

    wanted = [identity(entry) for entry in order]
    ranked: dict[str, int] = {}
    for rank, ident in enumerate(wanted):
        ranked.setdefault(repr(ident), rank)
    named = [item for item in items if repr(identity(item)) in ranked]
    named.sort(key=lambda item: ranked[repr(identity(item))])
    others = [item for item in items if repr(identity(item)) not in ranked]
    return named + others
