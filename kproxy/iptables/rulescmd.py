"""``kproxy rules``: print the iptables-restore payload a full sync would write.

Pure: the objects come from ``--from-file``; nothing is read from or written to the kernel,
so it needs neither root nor iptables. Both families are printed (a family with nothing to
program still shows kproxy's fixed chains), each followed by the builtin-chain jump rules a
sync inserts with ``iptables -I`` (shown as comments: they are not part of the payload).
Service ports left out of the plan come first, one ``# skipped ns/name:port/PROTO: reason``
line each; iptables-restore ignores lines starting with ``#``, so the output still loads.
"""

from __future__ import annotations

from typing import TextIO

from kproxy.config import ProxyConfig
from kproxy.filesource import feed_objects
from kproxy.iptables.context import plan_context
from kproxy.iptables.planner import IncrementalPlanner
from kproxy.iptables.restore import join_payloads, render_full
from kproxy.iptables.ruleset import Ruleset
from kproxy.model.types import IPFamily, ServicePortName
from kproxy.objectfile import load_object_file
from kproxy.rejections import RejectionLog
from kproxy.skipped import SkipReason, skipped_comment
from kproxy.state import Snapshot, StateTracker

TOOLS = {IPFamily.IPV4: "iptables", IPFamily.IPV6: "ip6tables"}


def print_rules(config: ProxyConfig, out: TextIO) -> None:
    """Raises ObjectFileError for an unreadable file (the caller reports it)."""
    if not config.from_file:
        raise ValueError("kproxy rules needs --from-file")
    tracker = StateTracker()
    feed_objects(load_object_file(config.from_file), tracker, RejectionLog(),
                 node_name=config.hostname, proxy_name=config.service_proxy_name)
    write_rules(config, tracker.snapshot(), out)


def write_rules(config: ProxyConfig, snapshot: Snapshot, out: TextIO) -> None:
    """The payloads of a full sync of ``snapshot``, preceded by the ports left out."""
    planned: list[tuple[IPFamily, IncrementalPlanner, Ruleset]] = []
    skipped: dict[ServicePortName, SkipReason] = {}
    for family in (IPFamily.IPV4, IPFamily.IPV6):
        planner = IncrementalPlanner(plan_context(config, snapshot.node, family))
        planned.append((family, planner, planner.full(snapshot)))
        skipped.update(planner.skipped)
    for name in sorted(skipped):
        out.write(skipped_comment(name, skipped[name]))
    for family, planner, ruleset in planned:
        tool = TOOLS[family]
        out.write(f"# {family.value}: {tool}-restore --noflush payload "
                  f"({ruleset.rule_count} rules)\n")
        out.write(join_payloads(render_full(ruleset)))
        for jump in planner.jumps:
            position = "-I" if jump.first else "-A"
            out.write(f"# {tool} -t {jump.table.value} {position} {jump.chain} {jump.args}\n")
