"""Bound ServiceAccount tokens that expire and are replaced, as the kubelet handles them.

The kubelet asks for a token with a lifetime (an hour by default), writes it into the pod's
projected token file, and writes a fresh one once 80 % of the lifetime has passed; the old
token is accepted until it expires. ``TokenRotator`` does the same for one dev API server
user with a short lifetime: each rotation issues a new token valid for ``ttl`` seconds and
replaces the file atomically (a rename, as the kubelet's atomic writer does), so a client
that re-reads the file in time never presents an expired token, and one that does not is
answered 401.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kproxy.devcluster.apiserver.access import AccessControl

log = logging.getLogger(__name__)

# The kubelet refreshes a projected token once this much of its lifetime has passed.
REFRESH_FRACTION = 0.8


class TokenRotator:
    def __init__(self, access: AccessControl, user: str, path: str | os.PathLike[str],
                 ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("the token lifetime must be positive")
        self.access = access
        self.user = user
        self.path = Path(path)
        self.ttl = ttl
        self.rotations = 0

    def rotate(self) -> str:
        """Issue the user a new token valid for ``ttl`` seconds and write it to the file."""
        token = self.access.add_user(self.user, ttl=self.ttl)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.new")
        staging.write_text(token)
        os.replace(staging, self.path)
        self.rotations += 1
        self._forget_expired()
        log.info("token of %s rotated (valid %gs), written to %s", self.user, self.ttl, self.path)
        return token

    def _forget_expired(self) -> None:
        # Expired tokens stay known long enough to be reported as expired, then go.
        horizon = self.access.clock() - self.ttl
        for token, expiry in list(self.access.expiries.items()):
            if expiry < horizon:
                del self.access.expiries[token]
                self.access.tokens.pop(token, None)
