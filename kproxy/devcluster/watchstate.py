"""Print what kproxy's informers and state tracker see, one JSON line per change.

``python -m kproxy.devcluster.watchstate --kubeconfig FILE --node NAME`` runs the real sources
(informers with kube-proxy's selectors, parsing, the tracker) and prints a digest of the
tracker's snapshot whenever it changes: the tests use it to follow the spine from API
objects to tracker state, and it is handy when debugging what a node would program.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from typing import Any

from kproxy.clock import SystemClock
from kproxy.kube.transport import KubeTransport
from kproxy.rejections import RejectionLog
from kproxy.sources import ApiSource
from kproxy.state import Snapshot, StateTracker


def snapshot_digest(snapshot: Snapshot, ready: bool, informer_stats: dict[str, Any]) -> str:
    services = {
        str(name): {
            "cluster_ips": list(port.cluster_ips),
            "port": port.port,
            "node_port": port.node_port,
            "type": port.type.value,
        }
        for name, port in sorted(snapshot.services.items())
    }
    endpoints = {
        str(name): sorted(
            f"{e.address}{'' if e.ready else '(not ready)'}" for e in endpoint_list
        )
        for name, endpoint_list in sorted(snapshot.endpoints.items())
    }
    node = None
    if snapshot.node is not None:
        node = {"name": snapshot.node.name, "zone": snapshot.node.zone,
                "pod_cidrs": list(snapshot.node.pod_cidrs)}
    return json.dumps(
        {"ready": ready, "services": services, "endpoints": endpoints, "node": node,
         "informers": informer_stats},
        sort_keys=True,
    )


async def watch_state(kubeconfig: str, node_name: str, proxy_name: str) -> None:
    changed = asyncio.Event()
    tracker = StateTracker(on_change=changed.set)
    transport = await KubeTransport.connect(kubeconfig)
    source = ApiSource(transport, tracker, RejectionLog(), node_name=node_name,
                       proxy_name=proxy_name, clock=SystemClock())
    task = asyncio.create_task(source.run())
    last = ""
    try:
        while True:
            # Also wake periodically, so that relists (informer stats) show without a change.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=0.5)
            changed.clear()
            await asyncio.sleep(0.02)  # let a burst of events settle into one line
            stats = {
                informer_spec: {"lists": informer.stats.lists, "expired": informer.stats.expired,
                                "errors": informer.stats.errors}
                for informer_spec, informer in zip(
                    ("services", "endpointslices", "node"), source.informers, strict=True
                )
            }
            digest = snapshot_digest(tracker.snapshot(), tracker.ready, stats)
            if digest != last:
                last = digest
                print(digest, flush=True)
            tracker.sync_succeeded(tracker.snapshot())
    finally:
        task.cancel()
        await transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--service-proxy-name", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_state(args.kubeconfig, args.node, args.service_proxy_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
