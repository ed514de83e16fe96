"""Reads of one kind as of one resourceVersion: filtered, in key order, page by page.

A page after the first is served from the state at the first page's resourceVersion: the
current objects with every later change undone from the history. Once that history is gone,
the continue token is too old (410), as with a real server after etcd compaction.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kproxy.devcluster.apiserver import errors
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.history import Change, EventType
from kproxy.devcluster.apiserver.objects import ObjectKey, StoredObject
from kproxy.devcluster.apiserver.pagination import LATEST, ContinueToken
from kproxy.devcluster.apiserver.resources import ResourceType
from kproxy.devcluster.apiserver.selectors import FieldSelector, LabelSelector


@dataclass(frozen=True, slots=True)
class ListPage:
    items: list[StoredObject]
    resource_version: int
    continue_token: str | None = None
    remaining_item_count: int | None = None


@dataclass(frozen=True, slots=True)
class View:
    """The objects of one kind as of one resourceVersion."""

    keys: Sequence[ObjectKey]
    lookup: Callable[[ObjectKey], StoredObject | None]
    exact: bool  # every key in ``keys`` exists (no overlay of older states)

    @classmethod
    def current(cls, objects: Mapping[ObjectKey, StoredObject], order: Sequence[ObjectKey]) -> View:
        return cls(order, objects.get, True)


def view_before(
    objects: Mapping[ObjectKey, StoredObject],
    order: Sequence[ObjectKey],
    later_changes: Sequence[Change],
    plural: str,
) -> View:
    """The objects as they were before ``later_changes`` (oldest first) were made."""
    overlay: dict[ObjectKey, StoredObject | None] = {}
    # Walking back, the oldest change of each key is seen last and tells its old state.
    for change in reversed(later_changes):
        if change.plural == plural:
            overlay[change.key] = None if change.type is EventType.ADDED else change.previous
    if not overlay:
        return View.current(objects, order)

    def lookup(key: ObjectKey) -> StoredObject | None:
        return overlay[key] if key in overlay else objects.get(key)

    return View(sorted(set(order) | set(overlay)), lookup, False)


def parse_resource_version(value: str | None) -> int | None:
    """None for unset/"0" (any version will do), else the number; 400 if not a number."""
    if value in (None, "", "0"):
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise errors.bad_request(f"invalid resource version {value!r}") from None
    if number < 0:
        raise errors.bad_request(f"invalid resource version {value!r}")
    return number


def check_list_version_options(requested: str | None, match: str | None) -> None:
    if match not in (None, "", "NotOlderThan", "Exact"):
        raise errors.bad_request(
            f'resourceVersionMatch: Unsupported value: "{match}": supported values: '
            '"Exact", "NotOlderThan"'
        )
    if match and requested in (None, ""):
        raise errors.bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided"
        )
    if match == "Exact" and requested == "0":
        raise errors.bad_request(
            'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
        )


def continuation(token_text: str, current_version: int) -> tuple[int, ObjectKey]:
    """The resourceVersion to read at and the key to start after, from a continue token."""
    token = ContinueToken.decode(token_text)
    at = current_version if token.resource_version == LATEST else token.resource_version
    return at, token.after


def continue_expired(after: ObjectKey) -> ApiError:
    error = errors.expired(
        "The provided continue parameter is too old to display a consistent list result. "
        "You can start a new list without the continue parameter, or use the continue token "
        "in this response to retrieve the remainder of the results. Continuing with the "
        "provided token results in an inconsistent list - objects that were created, "
        "modified, or deleted between the time the first chunk was returned and now may show "
        "up in the list."
    )
    error.metadata = {"continue": ContinueToken(LATEST, after).encode()}
    return error


def select_page(
    view: View,
    resource: ResourceType,
    at: int,
    *,
    namespace: str | None,
    labels: LabelSelector,
    fields: FieldSelector,
    limit: int,
    start_after: ObjectKey | None,
) -> ListPage:
    """Up to ``limit`` matching objects after ``start_after``, with a continue token if more
    match; the remaining count only when nothing is filtered, as a real server reports it."""
    keys = view.keys
    low, high = 0, len(keys)
    if namespace is not None and resource.namespaced:
        low = bisect.bisect_left(keys, (namespace, ""))
        high = bisect.bisect_left(keys, (namespace + "\0", ""))
    position = low
    if start_after is not None:
        position = max(low, bisect.bisect_right(keys, start_after, low, high))
    wanted_name = fields.required_value("metadata.name")
    items: list[StoredObject] = []
    more = False
    while position < high:
        key = keys[position]
        position += 1
        if wanted_name is not None and key[1] != wanted_name:
            continue
        obj = view.lookup(key)
        if obj is None:
            continue
        if not labels.empty and not labels.matches(obj.labels):
            continue
        if not fields.empty and not fields.matches(resource.field_values(obj.body)):
            continue
        if limit and len(items) == limit:
            more = True
            break
        items.append(obj)
    if not more:
        return ListPage(items, at)
    remaining = None
    if labels.empty and fields.empty:
        after = bisect.bisect_right(keys, items[-1].key, low, high)
        if view.exact:
            remaining = high - after
        else:
            remaining = sum(1 for key in keys[after:high] if view.lookup(key) is not None)
    return ListPage(items, at, ContinueToken(at, items[-1].key).encode(), remaining)
