"""Switching modes on the validating fake kernel: iptables mode's first sync removes what
userspace mode left (without which its full sync fails: the builtin chains still jump to
the portals), and leaves alone what is not userspace mode's."""

from __future__ import annotations

from kproxy.clock import FakeClock
from kproxy.config import ProxyConfig
from kproxy.iptables.context import plan_context
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.proxier import IptablesProxier, Sysctls
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.iptables.ruleset import Table
from kproxy.iptables.staticchains import SERVICES
from kproxy.model.types import IPFamily
from kproxy.modeswitch import IptablesProxierAfterUserspace, remove_userspace_mode
from kproxy.state import ResourceKind, Snapshot, StateTracker
from kproxy.userspace.chains import PORTALS_CONTAINER, USERSPACE_CHAINS
from kproxy.userspace.portal import plan_portals

V4 = IPFamily.IPV4
CONFIG = ProxyConfig(hostname="node-1")


class NoSysctls(Sysctls):
    def read(self, key: str) -> str | None:
        return None

    def write(self, key: str, value: str) -> None:
        pass


def leftover_portals() -> tuple[FakeIptables, FakeBackend]:
    """A kernel where userspace mode ran and was killed: portals and their jumps."""
    kernel = FakeIptables(families=(V4,))
    backend = FakeBackend(kernel)
    ruleset = plan_portals((), {}, plan_context(CONFIG, None, V4))
    kernel.apply_restore(V4, join_payloads(render_full(ruleset)))
    backend.ensure_jumps(V4, ruleset.jumps)
    return kernel, backend


def snapshot() -> Snapshot:
    tracker = StateTracker()
    tracker.mark_listed(ResourceKind.SERVICES)
    tracker.mark_listed(ResourceKind.ENDPOINT_SLICES)
    return tracker.snapshot()


def all_chains(kernel: FakeIptables) -> set[str]:
    return set().union(*(kernel.kproxy_chains(V4, table) for table in Table))


async def test_plain_iptables_mode_fails_over_leftover_portals() -> None:
    _, backend = leftover_portals()
    proxier = IptablesProxier(CONFIG, backend, clock=FakeClock(), families=(V4,),
                              sysctls=NoSysctls())
    result = await proxier.sync(snapshot())
    assert not result.ok  # why the switch must remove the portals first


async def test_iptables_mode_removes_leftover_portals_first() -> None:
    kernel, backend = leftover_portals()
    proxier = IptablesProxierAfterUserspace(CONFIG, backend, clock=FakeClock(),
                                            families=(V4,), sysctls=NoSysctls())
    result = await proxier.sync(snapshot())
    assert result.ok, result.error
    chains = all_chains(kernel)
    assert SERVICES in chains and not chains & USERSPACE_CHAINS
    assert PORTALS_CONTAINER not in kernel.save(V4)


def test_nothing_to_remove_is_an_empty_report() -> None:
    kernel = FakeIptables(families=(V4,))
    kernel.apply_restore(V4, f"*nat\n:{SERVICES} - [0:0]\nCOMMIT\n")
    report = remove_userspace_mode(FakeBackend(kernel), (V4,))
    assert report.ok and not report.deleted_chains and not report.removed_jumps
    assert all_chains(kernel) == {SERVICES}
