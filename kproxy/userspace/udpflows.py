"""Forget the UDP conntrack flows that a closed listener's portal redirected.

A UDP "connection" lives in conntrack as long as its client keeps sending: a flow that was
REDIRECTed to a listener's port keeps going there after the listener is closed (its
service port deleted, or left without endpoints), even when a new listener on another port
serves the service again. kube-proxy's iptables mode deletes its stale UDP flows for the
same reason; here they are the flows whose reply comes from the closed listener's port and
whose original destination port is the service's port or NodePort.

``conntrack -D`` with those filters, once per port pair: listeners close rarely, so the
table dump each invocation costs is no concern here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from kproxy.model.types import IPFamily

log = logging.getLogger(__name__)

_FAMILY_FLAG = {IPFamily.IPV4: "ipv4", IPFamily.IPV6: "ipv6"}
# conntrack -D exits 1 when no flow matched: nothing to forget is not a failure.
_NOTHING_MATCHED = 1


def forget_commands(family: IPFamily, listener_port: int,
                    service_ports: Iterable[int]) -> list[list[str]]:
    """The ``conntrack -D`` commands for one closed listener (pure)."""
    return [
        ["conntrack", "-D", "-f", _FAMILY_FLAG[family], "-p", "udp",
         "--orig-port-dst", str(port), "--reply-port-src", str(listener_port)]
        for port in sorted(set(service_ports))
    ]


class UdpFlowForgetter:
    """Runs the commands of :func:`forget_commands`; failures are logged, never raised."""

    def __init__(self, command_prefix: tuple[str, ...] = ()) -> None:
        self._prefix = command_prefix
        self._warned = False

    async def __call__(self, family: IPFamily, listener_port: int,
                       service_ports: Iterable[int]) -> None:
        for argv in forget_commands(family, listener_port, service_ports):
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._prefix, *argv, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
                _, stderr = await process.communicate()
            except OSError as error:
                self._warn(f"{argv[0]}: {error}")
                return
            if process.returncode not in (0, _NOTHING_MATCHED):
                self._warn(f"{' '.join(argv)} failed ({process.returncode}): "
                           f"{stderr.decode(errors='replace').strip()}")

    def _warn(self, message: str) -> None:
        # Once: stale flows then only live until their conntrack timeout.
        if not self._warned:
            self._warned = True
            log.warning("cannot forget UDP flows of closed listeners: %s", message)
