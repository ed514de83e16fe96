"""Objects in, payloads out, through the path kproxy itself takes: JSON text decoded as the
informers decode it, the feeds and the state tracker (``feed_objects``), then the iptables
planner's full sync (as ``kproxy rules`` renders it) and the userspace proxier's portal rules
(its real ``sync``, with listeners that report a port derived from their key and the
validating in-memory kernel recording what was restored)."""

from __future__ import annotations

import asyncio
import json
import zlib
from dataclasses import dataclass
from typing import Any

from kproxy.clock import FakeClock
from kproxy.config import DetectLocalMode, ProxyConfig
from kproxy.filesource import feed_objects
from kproxy.iptables.context import plan_context
from kproxy.iptables.fake import FakeBackend, FakeIptables
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.model.types import IPFamily
from kproxy.objectfile import ClusterObjects
from kproxy.rejections import RejectionLog
from kproxy.state import StateTracker
from kproxy.userspace.limits import RelayLimits
from kproxy.userspace.proxier import UserspaceProxier
from kproxy.userspace.selection import ListenerKey
from kproxy.userspace.targets import Target

FAMILIES = (IPFamily.IPV4, IPFamily.IPV6)
CONFIG = ProxyConfig(
    hostname="node-a",
    cluster_cidrs=("10.244.0.0/16", "fd00:244::/48"),
    detect_local_mode=DetectLocalMode.CLUSTER_CIDR,
)


@dataclass(frozen=True)
class Fed:
    """The tracker after a feed, and what was rejected on the way."""

    tracker: StateTracker
    rejections: RejectionLog


def decode(texts: list[str]) -> list[Any]:
    """JSON texts as an informer's decoder turns them into objects (the last duplicate key
    wins)."""
    return [json.loads(text) for text in texts]


def feed(objects: list[Any]) -> Fed:
    """Services, EndpointSlices and Nodes, in the given order, as one complete list each.

    Objects of other kinds (or no kind: garbage) go to the kind their position says, so a
    list element that is not even an object still reaches a feed."""
    sorted_objects = ClusterObjects()
    for obj in objects:
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind == "EndpointSlice":
            sorted_objects.endpoint_slices.append(obj)
        elif kind == "Node":
            sorted_objects.nodes.append(obj)
        else:
            sorted_objects.services.append(obj)
    tracker = StateTracker()
    rejections = RejectionLog()
    feed_objects(sorted_objects, tracker, rejections, node_name=CONFIG.hostname,
                 proxy_name=CONFIG.service_proxy_name)
    return Fed(tracker, rejections)


def iptables_payloads(fed: Fed, config: ProxyConfig = CONFIG) -> dict[IPFamily, str]:
    """Per family, the iptables-restore --noflush payload of a full sync (``kproxy rules``)."""
    snapshot = fed.tracker.snapshot()
    payloads: dict[IPFamily, str] = {}
    for family in FAMILIES:
        planner = IncrementalPlanner(plan_context(config, snapshot.node, family))
        payloads[family] = join_payloads(render_full(planner.full(snapshot)))
    return payloads


class _KeyedListener:
    """A listener whose port is a function of its key: equal inputs, equal payloads."""

    def __init__(self, key: ListenerKey) -> None:
        self._port = 20000 + zlib.crc32(str(key).encode()) % 30000

    @property
    def port(self) -> int:
        return self._port

    def update(self, targets: tuple[Target, ...], affinity_timeout: float | None) -> None:
        pass

    async def close(self, grace: float = 0.0) -> None:
        pass


async def _open_keyed(key: ListenerKey) -> _KeyedListener:
    return _KeyedListener(key)


def userspace_payloads(fed: Fed, config: ProxyConfig = CONFIG) -> dict[IPFamily, str]:
    """Per family, the portal rules payload the userspace proxier's first sync restores."""
    backend = FakeBackend(FakeIptables(families=FAMILIES))
    proxier = UserspaceProxier(config, backend, clock=FakeClock(), limits=RelayLimits(),
                               families=FAMILIES, listener_factory=_open_keyed)

    async def sync_once() -> None:
        result = await proxier.sync(fed.tracker.snapshot())
        assert result.ok, result.error

    asyncio.run(sync_once())
    payloads: dict[IPFamily, str] = {}
    for family, tables in backend.payloads:
        payloads.setdefault(family, join_payloads(tables))
    return payloads
