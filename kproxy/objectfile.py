"""Read Services, EndpointSlices and Nodes from a JSON or YAML file (``--from-file``).

The file is a JSON or YAML stream of documents (kproxy.objectdecode says which and how), each
an object or a ``v1`` ``List`` of objects (as ``kubectl get -o json|yaml`` prints), or a mix.
Objects of other kinds are skipped with a log line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from kproxy.objectdecode import DecodeError, decode_documents

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024

SERVICE = ("v1", "Service")
ENDPOINT_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")
NODE = ("v1", "Node")


class ObjectFileError(Exception):
    """The file cannot be read or is not YAML/JSON; names the file."""


@dataclass
class ClusterObjects:
    services: list[dict[str, Any]] = field(default_factory=list)
    endpoint_slices: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "document 3: kind Deployment"


def load_object_file(path: str) -> ClusterObjects:
    try:
        documents = decode_documents(read_limited(path))
    except UnicodeDecodeError as error:
        raise ObjectFileError(f"{path}: not UTF-8 text ({error.reason} at byte "
                              f"{error.start})") from error
    except DecodeError as error:
        raise ObjectFileError(f"{path}: {error}") from error
    return sort_objects(documents)


def read_limited(path: str) -> bytes:
    """The file's bytes, refused past MAX_FILE_BYTES (also for a pipe or a growing file)."""
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ObjectFileError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES}-byte "
                                      "limit")
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ObjectFileError(f"{path}: {error.strerror or error}") from error
    if len(data) > MAX_FILE_BYTES:
        raise ObjectFileError(f"{path}: over the {MAX_FILE_BYTES}-byte limit")
    return data


def sort_objects(documents: list[Any]) -> ClusterObjects:
    objects = ClusterObjects()
    for index, document in enumerate(documents, start=1):
        _sort_one(document, f"document {index}", objects)
    for note in objects.skipped:
        log.warning("--from-file: skipped %s", note)
    return objects


def _sort_one(document: Any, where: str, objects: ClusterObjects) -> None:
    if not isinstance(document, dict):
        objects.skipped.append(f"{where}: not an object")
        return
    kind_key = (document.get("apiVersion"), document.get("kind"))
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        for position, item in enumerate(document["items"]):
            _sort_one(item, f"{where} items[{position}]", objects)
    elif kind_key == SERVICE:
        objects.services.append(document)
    elif kind_key == ENDPOINT_SLICE:
        objects.endpoint_slices.append(document)
    elif kind_key == NODE:
        objects.nodes.append(document)
    else:
        objects.skipped.append(f"{where}: apiVersion {kind_key[0]!r} kind {kind_key[1]!r}")
