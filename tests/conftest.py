"""Shared test configuration: ``kernel`` tests skip, with the reason, where the lab cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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


# With pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``), tests are handed to the
# workers in groups: one per module, so that a module's shared lab is built once, and one for
# the whole end-to-end suite, whose clusters carry timed load (rolling updates at 100
# requests/s) and must not compete with each other for the two cores.
_SERIAL_DIRECTORIES = ("tests/e2e/",)


def _xdist_group(item: pytest.Item) -> str:
    path = item.nodeid.split("::", 1)[0]
    return next((folder for folder in _SERIAL_DIRECTORIES if path.startswith(folder)), path)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))
    for item in items:
        if item.get_closest_marker("kernel") is None:
            continue
        reason = kernel_lab_unavailable()
        if reason is not None:
            if os.environ.get("KPROXY_REQUIRE_KERNEL_TESTS") == "1":
                raise pytest.UsageError(f"kernel tests required but cannot run: {reason}")
            item.add_marker(pytest.mark.skip(reason=reason))


# -- the host's own network namespace must come out of the test session unchanged ----------

_HOST_STATE_COMMANDS = (
    ("nft", "list", "ruleset"),
    ("iptables-legacy-save",),
    ("ip6tables-legacy-save",),
)
_HOST_SYSCTLS = (
    "/proc/sys/net/ipv4/conf/all/route_localnet",
    "/proc/sys/net/ipv4/ip_forward",
)


def _host_network_state() -> dict[str, str]:
    """The host namespace's firewall and the sysctls kproxy may set (comparable snapshots)."""
    state: dict[str, str] = {}
    for argv in _HOST_STATE_COMMANDS:
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run(argv, capture_output=True, text=True)
        # Drop iptables-save's timestamp comments; everything else must be identical.
        state[" ".join(argv)] = "\n".join(
            line for line in done.stdout.splitlines() if not line.startswith("#")
        )
    for path in _HOST_SYSCTLS:
        try:
            with open(path) as value:
                state[path] = value.read().strip()
        except OSError:
            pass
    return state


def pytest_sessionstart(session: pytest.Session) -> None:
    # Every table the tests write belongs to a namespace of their own, so the machine-wide
    # xtables lock (/run/xtables.lock) only makes unrelated runs wait for each other; each
    # session, and every iptables tool and kproxy process it starts, takes a private one.
    if "XTABLES_LOCKFILE" not in os.environ:
        lock_dir = tempfile.mkdtemp(prefix="kproxy-tests-")
        os.environ["XTABLES_LOCKFILE"] = os.path.join(lock_dir, "xtables.lock")
    if os.geteuid() == 0:
        session.config.stash[_HOST_STATE_KEY] = _host_network_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_HOST_STATE_KEY, None)
    if before is None:
        return
    after = _host_network_state()
    changed = sorted(key for key in before.keys() | after.keys()
                     if before.get(key) != after.get(key))
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("the host's own network namespace was changed by the tests "
                   f"(must never happen): {', '.join(changed)}")
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_HOST_STATE_KEY = pytest.StashKey[dict[str, str]]()
