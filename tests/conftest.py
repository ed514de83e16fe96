"""Shared test configuration: ``kernel`` tests skip, with the reason, where the lab cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest


@cache
def kernel_lab_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "iptables-restore", "conntrack"):
        if shutil.which(tool) is None:
            return f"kernel tests need {tool!r} on PATH (make test installs it)"
    name = f"kp-probe-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        return f"cannot create network namespaces: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("kernel") is None:
            continue
        reason = kernel_lab_unavailable()
        if reason is not None:
            if os.environ.get("KPROXY_REQUIRE_KERNEL_TESTS") == "1":
                raise pytest.UsageError(f"kernel tests required but cannot run: {reason}")
            item.add_marker(pytest.mark.skip(reason=reason))
