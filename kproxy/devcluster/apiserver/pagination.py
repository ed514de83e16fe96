"""Continue tokens for paginated lists.

A token names the resourceVersion the first page was read at and the last key returned, so
later pages show the collection as it was then (or 410 Gone once that history is dropped).
A resourceVersion of -1 means "continue from the latest state": the server hands such a token
out with the 410, for clients that accept an inconsistent list.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from kproxy.devcluster.apiserver.errors import bad_request
from kproxy.devcluster.apiserver.objects import ObjectKey

TOKEN_VERSION = "meta.k8s.io/v1"
LATEST = -1


@dataclass(frozen=True, slots=True)
class ContinueToken:
    resource_version: int
    after: ObjectKey

    def encode(self) -> str:
        namespace, name = self.after
        payload = {
            "v": TOKEN_VERSION,
            "rv": self.resource_version,
            "start": f"{namespace}/{name}\0",
        }
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> ContinueToken:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = json.loads(raw)
            if payload.get("v") != TOKEN_VERSION:
                raise ValueError("unsupported version")
            resource_version = int(payload["rv"])
            start = str(payload["start"])
            if not start.endswith("\0") or "/" not in start:
                raise ValueError("malformed start key")
            namespace, _, name = start[:-1].partition("/")
        except (binascii.Error, ValueError, KeyError, TypeError, AttributeError) as error:
            raise bad_request(f"continue key is not valid: {error}") from None
        if resource_version < LATEST or resource_version == 0:
            raise bad_request("continue key is not valid: incorrect encoded start resourceVersion")
        return cls(resource_version, (namespace, name))
