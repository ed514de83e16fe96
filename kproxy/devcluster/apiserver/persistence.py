"""State files: a store's objects and resourceVersion, saved on shutdown and reloaded on start.

The file is JSON (``{"resourceVersion": "N", "items": [...]}``), written to a temporary file
and renamed into place, so a crash mid-write never leaves a torn state behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kproxy.devcluster.apiserver.objects import encode
from kproxy.devcluster.apiserver.resources import RESOURCE_TYPES
from kproxy.devcluster.apiserver.store import Store

STATE_KIND = "DevApiServerState"


def snapshot(store: Store) -> tuple[int, bytes]:
    """The store's state encoded now (synchronously, so it is consistent)."""
    items = [obj.raw for resource in RESOURCE_TYPES for obj in store.objects(resource)]
    head = encode({"kind": STATE_KIND, "resourceVersion": str(store.resource_version)})[:-1]
    return store.resource_version, head + b',"items":[' + b",\n".join(items) + b"]}\n"


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save(store: Store, path: Path) -> int:
    version, data = snapshot(store)
    write_atomically(path, data)
    return version


def load(store: Store, path: Path) -> bool:
    """Load a saved state into the store; False if there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    document = json.loads(raw)
    if not isinstance(document, dict) or document.get("kind") != STATE_KIND:
        raise ValueError(f"{path} is not a dev API server state file")
    store.restore(int(document["resourceVersion"]), document.get("items") or [])
    return True
