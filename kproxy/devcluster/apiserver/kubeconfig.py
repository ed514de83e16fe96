"""A kubeconfig for the dev API server: plain HTTP; a bearer token when access is enforced,
inline or (with token rotation) as a ``tokenFile`` the client re-reads."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

CONTEXT_NAME = "kproxy-devapi"


def kubeconfig_document(
    server_url: str, namespace: str = "default", token: str | None = None,
    token_file: str | None = None,
) -> dict[str, object]:
    user: dict[str, str] = {"token": token} if token else {}
    if token_file:
        user = {"tokenFile": token_file}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": server_url}}],
        "users": [{"name": CONTEXT_NAME, "user": user}],
        "contexts": [
            {
                "name": CONTEXT_NAME,
                "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }


def write_kubeconfig(
    path: str | os.PathLike[str], server_url: str, token: str | None = None,
    token_file: str | None = None,
) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    document = kubeconfig_document(server_url, token=token, token_file=token_file)
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target
