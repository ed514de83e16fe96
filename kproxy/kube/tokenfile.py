"""A bearer token kept in a file that someone else rewrites.

A projected ServiceAccount token expires (one hour by default) and the kubelet writes a fresh
one into the pod's token file well before that. Like client-go's cached token source, the
token is re-read when the last read is older than ``reread_interval`` (a minute by default),
and at once when the API server answers 401, since the file may hold a newer token by then.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

# client-go and kubernetes_asyncio re-read a token file this often.
TOKEN_REREAD_SECONDS = 60.0


class TokenFile:
    def __init__(
        self,
        path: str,
        *,
        reread_interval: float = TOKEN_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reread_interval = reread_interval
        self._clock = clock
        self._token = ""
        self._read_at = 0.0
        self.reads = 0
        if not self.reread():
            raise OSError(f"token file {path} is empty")

    @property
    def token(self) -> str:
        """The token as last read."""
        return self._token

    def current(self) -> str:
        """The token, re-read first when the last read is older than the interval."""
        if self._clock() - self._read_at >= self.reread_interval:
            self.reread()
        return self._token

    def reread(self) -> bool:
        """Read the file now; True when it holds a different token than before.

        A file that cannot be read keeps the last token (the kubelet replaces the file
        atomically, so this is a passing fault or a misconfiguration worth one log line).
        """
        try:
            token = Path(self.path).read_text().strip()
        except OSError as error:
            if not self._token:
                raise
            log.warning("cannot re-read token file %s, keeping the last token: %s",
                        self.path, error)
            return False
        self._read_at = self._clock()
        self.reads += 1
        if not token or token == self._token:
            return False
        self._token = token
        return True


def kubeconfig_token_file(kubeconfig: str) -> str | None:
    """The ``tokenFile`` of the current context's user, when it has no inline ``token``
    (kubernetes_asyncio prefers ``token``, as client-go does); relative to the kubeconfig."""
    try:
        document = yaml.safe_load(Path(kubeconfig).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(document, dict):
        return None
    user = _current_user(document)
    if user is None or user.get("token") or not isinstance(user.get("tokenFile"), str):
        return None
    path = os.path.expanduser(str(user["tokenFile"]))
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(kubeconfig), path)


def _current_user(document: dict[object, object]) -> dict[object, object] | None:
    context_name = document.get("current-context")
    user_name = None
    for context in _named(document.get("contexts")):
        body = context.get("context")
        if context.get("name") == context_name and isinstance(body, dict):
            user_name = body.get("user")
    for user in _named(document.get("users")):
        body = user.get("user")
        if user.get("name") == user_name and isinstance(body, dict):
            return body
    return None


def _named(items: object) -> list[dict[object, object]]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
