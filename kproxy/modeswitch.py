"""Switching proxy modes on a node: each mode removes the other mode's rules when it starts.

Both modes redirect the same service addresses, so the other mode's rules would shadow, or
be shadowed by, the new ones; and iptables mode's full sync would try to delete the
userspace chains that the builtin chains still jump to. Each mode therefore removes the
other's chains and jumps around its own first sync:

- iptables mode removes userspace mode's portals just before its first sync writes (the
  gap is that one sync);
- userspace mode removes iptables mode's rules just after its first sync has written the
  portals (rules read top-down: until then, whichever jump comes first forwards).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kproxy.config.record import ProxyConfig
from kproxy.iptables.backend import Backend, BackendError
from kproxy.iptables.cleanup import (
    CleanupReport,
    cleanup,
    iptables_mode_chain,
    userspace_mode_chain,
)
from kproxy.iptables.proxier import IptablesProxier
from kproxy.iptables.ruleset import Table
from kproxy.model.types import IPFamily
from kproxy.proxier import SyncResult
from kproxy.state import Snapshot
from kproxy.userspace.chains import FILTER_CHAINS, NAT_CHAINS

log = logging.getLogger(__name__)


def remove_iptables_mode(backend: Backend, families: tuple[IPFamily, ...]) -> CleanupReport:
    """Remove iptables mode's chains and jumps, leaving userspace mode's portals."""
    return _logged("iptables", cleanup(backend, families, iptables_mode_chain))


def remove_userspace_mode(backend: Backend, families: tuple[IPFamily, ...]) -> CleanupReport:
    """Remove userspace mode's portals, leaving iptables mode's chains.

    Every iptables-mode start calls this: a few ``-S CHAIN`` commands tell whether there is
    anything to remove before the whole ruleset (large at scale) is saved and parsed.
    """
    present = tuple(family for family in families if _has_userspace_chains(backend, family))
    if not present:
        return CleanupReport()
    return _logged("userspace", cleanup(backend, present, userspace_mode_chain))


def _has_userspace_chains(backend: Backend, family: IPFamily) -> bool:
    try:
        return any(backend.chain_exists(family, table, name)
                   for table, names in ((Table.NAT, NAT_CHAINS), (Table.FILTER, FILTER_CHAINS))
                   for name in names)
    except BackendError:
        return True  # unknown: let the cleanup look


def _logged(mode: str, report: CleanupReport) -> CleanupReport:
    if report.deleted_chains or report.removed_jumps or report.kept_chains:
        log.info("removed %s mode's rules: %d chains, %d jumps", mode,
                 len(report.deleted_chains), len(report.removed_jumps))
    for error in report.errors:
        log.warning("removing %s mode's rules: %s", mode, error)
    return report


class IptablesProxierAfterUserspace(IptablesProxier):
    """iptables mode that first removes what userspace mode left (see the module doc)."""

    def __init__(self, config: ProxyConfig, backend: Backend, **kwargs: Any) -> None:
        super().__init__(config, backend, **kwargs)
        families: tuple[IPFamily, ...] | None = kwargs.get("families")
        self._switching_backend = backend
        self._switching_families = families or backend.families()
        self._userspace_removed = False

    async def sync(self, snapshot: Snapshot) -> SyncResult:
        if not self._userspace_removed:
            await asyncio.to_thread(remove_userspace_mode, self._switching_backend,
                                    self._switching_families)
            self._userspace_removed = True
        return await super().sync(snapshot)
