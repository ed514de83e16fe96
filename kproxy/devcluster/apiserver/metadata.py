"""Object metadata: identity checks and the system fields a server sets on every object."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

from kproxy.clock import Clock
from kproxy.devcluster.apiserver import errors
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.resources import ResourceType
from kproxy.devcluster.apiserver.validation import (
    FieldError,
    invalid,
    required,
    validate_annotations,
    validate_labels,
)

# Characters a generated name suffix is drawn from (no vowels: no accidental words).
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
NAME_SUFFIX_LENGTH = 5
MAX_GENERATE_NAME_PREFIX = 58
METADATA_ORDER = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
)
# Fields only a server sets; whatever a client sends for them is dropped.
SYSTEM_METADATA = ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink")


def timestamp(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.wall(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def ordered(body: JsonObject) -> JsonObject:
    """The object with the field order a real server writes (kind, apiVersion, metadata...)."""
    metadata = body["metadata"]
    ordered_metadata = {key: metadata[key] for key in METADATA_ORDER if key in metadata}
    ordered_metadata.update((k, v) for k, v in metadata.items() if k not in ordered_metadata)
    result: JsonObject = {
        "kind": body["kind"],
        "apiVersion": body["apiVersion"],
        "metadata": ordered_metadata,
    }
    result.update((k, v) for k, v in body.items() if k not in result and k != "status")
    if "status" in body:
        result["status"] = body["status"]
    return result


def check_identity(resource: ResourceType, body: Any) -> JsonObject:
    """Check (or fill in) apiVersion and kind; returns the object's metadata dict."""
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object")
    api_version = body.setdefault("apiVersion", resource.api_version)
    kind = body.setdefault("kind", resource.kind)
    if api_version != resource.api_version:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({resource.api_version})"
        )
    if kind != resource.kind:
        raise errors.bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
        )
    metadata = body.get("metadata")
    if metadata is None:
        metadata = body["metadata"] = {}
    if not isinstance(metadata, dict):
        raise errors.bad_request("metadata must be a JSON object")
    return metadata


def request_namespace(resource: ResourceType, metadata: JsonObject, namespace: str | None) -> str:
    """The namespace a write goes to: the URL's, which the body must not contradict."""
    if not resource.namespaced:
        metadata.pop("namespace", None)
        return ""
    given = metadata.get("namespace")
    if namespace is None:
        namespace = str(given or "default")
    elif given and given != namespace:
        raise errors.bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    metadata["namespace"] = namespace
    return namespace


def metadata_errors(rules: KindRules, metadata: JsonObject) -> list[FieldError]:
    """What is wrong with an object's name, labels and annotations."""
    problems: list[FieldError] = []
    name = metadata.get("name")
    if not name:
        problems.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        problems.append(invalid("metadata.name", name, "must be a string"))
    else:
        problems.extend(invalid("metadata.name", name, p) for p in rules.name_problems(name))
    problems.extend(validate_labels(metadata.get("labels"), "metadata.labels"))
    problems.extend(validate_annotations(metadata.get("annotations"), "metadata.annotations"))
    return problems


def generate_name(prefix: str, rng: random.Random) -> str:
    """A name for ``metadata.generateName``: the prefix and five random characters."""
    suffix = "".join(rng.choice(NAME_SUFFIX_ALPHABET) for _ in range(NAME_SUFFIX_LENGTH))
    return prefix[:MAX_GENERATE_NAME_PREFIX] + suffix
