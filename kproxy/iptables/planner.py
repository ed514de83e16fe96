"""The incremental planner: a full ruleset once, then only what changed.

``full(snapshot)`` plans every service port of the family and returns the whole
:class:`Ruleset`; ``partial(snapshot)`` re-plans the ports in ``snapshot.changed`` (and
everything, when the Node change alters the :class:`PlanContext`) and returns a
:class:`RulesetDelta` relative to the previous result: chains to (re)write in full, chains
to delete. The proxier calls ``full`` for the first sync, after any failure and
periodically, ``partial`` otherwise; a failed ``partial`` must be followed by ``full``, since
the planner has already moved on to the state the failed delta described.

Per-port plans are pure functions of (ServicePort, endpoints, PlanContext, comments flag)
and are cached with their inputs: ``full`` reuses a plan whose inputs are unchanged, so the
periodic full sync costs little planning. The dispatch trees are rebuilt from scratch by
``full`` (canonical structure, independent of history) and updated in place by ``partial``.

kube-proxy leaves the comments out of endpoint rules above 1000 endpoints per family
("large cluster mode"); so do we. Crossing the threshold re-plans every port.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

from kproxy.iptables.context import PlanContext
from kproxy.iptables.dispatch import DispatchChanges, DispatchEntry, DispatchTree
from kproxy.iptables.ruleset import BuiltinJump, Chain, Ruleset, RulesetDelta, Table, TableRules
from kproxy.iptables.servicechains import ServicePortPlan, plan_service_port
from kproxy.iptables.serviceview import FamilyServicePort, family_endpoints, family_view
from kproxy.iptables.staticchains import (
    BUILTIN_JUMPS,
    DispatchRoot,
    nodeport_tail_rules,
    static_chains,
)
from kproxy.model.types import Endpoint, IPFamily, Protocol, ServicePort, ServicePortName
from kproxy.renderable import endpoints_problem, port_problem
from kproxy.skipped import SkipKind, SkipReason
from kproxy.state import Snapshot

# kube-proxy's largeClusterEndpointsThreshold.
LARGE_CLUSTER_ENDPOINTS = 1000
DEFAULT_LEAF_SIZE = 32
_TABLE_ORDER = (Table.NAT, Table.FILTER, Table.MANGLE)


class _Inputs:
    """One port's planning inputs as the snapshot has them, and as the family sees them.

    A port with a string the payload cannot hold (:mod:`kproxy.renderable`) gets no view:
    it is left out of the plan with ``skipped`` saying why, and nothing else changes. The
    port's own fields are checked before its family is looked at (a family could not even be
    told apart in a malformed address), its endpoints only in the family they belong to.
    """

    __slots__ = ("endpoints", "family_endpoints", "port", "skipped", "view")

    def __init__(
        self, port: ServicePort, endpoints: tuple[Endpoint, ...], family: IPFamily
    ) -> None:
        self.port = port
        self.endpoints = endpoints  # both families, as in the snapshot
        self.view: FamilyServicePort | None = None  # None: no cluster IP of the family
        self.family_endpoints: tuple[Endpoint, ...] = ()
        self.skipped: SkipReason | None = None
        problem = port_problem(port)
        if problem is None:
            view = family_view(port, family)
            if view is not None:
                members = family_endpoints(endpoints, family)
                problem = endpoints_problem(members)
                if problem is None:
                    self.view, self.family_endpoints = view, members
        if problem is not None:
            self.skipped = SkipReason(SkipKind.UNRENDERABLE, problem)

    def same_as(self, other: _Inputs) -> bool:
        return self.holds(other.port, other.endpoints)

    def holds(self, port: ServicePort, endpoints: tuple[Endpoint, ...]) -> bool:
        return (self.port is port or self.port == port) and (
            self.endpoints is endpoints or self.endpoints == endpoints
        )


class _Cached:
    __slots__ = ("inputs", "plan")

    def __init__(self, inputs: _Inputs, plan: ServicePortPlan | None) -> None:
        self.inputs = inputs
        self.plan = plan  # None: nothing in this family


class IncrementalPlanner:
    """Plans one IP family's ruleset, keeping what it needs to plan the next change cheaply."""

    def __init__(self, context: PlanContext, *, leaf_size: int = DEFAULT_LEAF_SIZE) -> None:
        self._context = context
        self._leaf_size = leaf_size
        self._ports: dict[ServicePortName, _Cached] = {}
        self._trees: dict[DispatchRoot, DispatchTree] = {}
        self._static: dict[Table, tuple[Chain, ...]] = {}
        self._tail: dict[Hashable, DispatchEntry] = {}
        self._total_endpoints = 0
        self._endpoint_comments = True
        self._no_local_internal = 0
        self._no_local_external = 0
        self._skipped: dict[ServicePortName, SkipReason] = {}
        self._planned = False

    # -- what the proxier reads -------------------------------------------------------------

    @property
    def context(self) -> PlanContext:
        """The context of the last plan (re-derived whenever the Node object changes)."""
        return self._context

    @property
    def needs_route_localnet(self) -> bool:
        return self._context.needs_route_localnet

    @property
    def jumps(self) -> tuple[BuiltinJump, ...]:
        return BUILTIN_JUMPS

    @property
    def skipped(self) -> Mapping[ServicePortName, SkipReason]:
        """The ports of the snapshot left out of the plan, and why (see :class:`_Inputs`)."""
        return self._skipped

    @property
    def services_without_local_endpoints(self) -> tuple[int, int]:
        """(internal, external): ports whose Local policy has no endpoint on this node."""
        return self._no_local_internal, self._no_local_external

    # -- planning ---------------------------------------------------------------------------

    def full(self, snapshot: Snapshot) -> Ruleset:
        """Everything the family needs, from scratch (cached port plans are reused)."""
        context = self._context.with_node(snapshot.node)
        reusable = context == self._context
        self._context = context
        self._refresh_ports(snapshot, reusable)
        tables: dict[Table, dict[str, Chain]] = {table: {} for table in _TABLE_ORDER}
        for root, tree in self._rebuild_trees().items():
            chains = tables[root.table]
            for chain in tree.chains():
                chains[chain.name] = chain
        self._static = static_chains(context)
        for table, static in self._static.items():
            for chain in static:
                tables[table][chain.name] = chain
        nat = tables[Table.NAT]
        for cached in self._ports.values():
            if cached.plan is not None:
                for chain in cached.plan.chains:
                    nat[chain.name] = chain
        self._planned = True
        return Ruleset(
            family=context.family,
            tables={table: TableRules(table, chains) for table, chains in tables.items()},
            jumps=BUILTIN_JUMPS,
        )

    def partial(self, snapshot: Snapshot) -> RulesetDelta:
        """The chains to rewrite and delete since the last plan (empty if nothing changed)."""
        if not self._planned:
            raise RuntimeError("partial() needs a full() plan to start from")
        context = self._context.with_node(snapshot.node)
        context_changed = context != self._context
        self._context = context
        names: Iterable[ServicePortName] = snapshot.changed
        if context_changed:
            names = set(snapshot.services) | set(self._ports)
        inputs = {name: _inputs_of(snapshot, name, context.family) for name in names}
        comments = self._comments_after(inputs)
        replan_all = context_changed or comments != self._endpoint_comments
        if replan_all and not context_changed:
            everything = set(snapshot.services) | set(self._ports)
            inputs = {name: _inputs_of(snapshot, name, context.family) for name in everything}
        self._endpoint_comments = comments

        delta = _DeltaBuilder()
        for name, new in inputs.items():
            cached = self._ports.get(name)
            unchanged = cached is not None and new is not None and cached.inputs.same_as(new)
            if unchanged and not replan_all:
                continue
            new_cached = _Cached(new, self._plan(new)) if new is not None else None
            self._forget(name)
            if new_cached is not None:
                self._store(name, new_cached)
            delta.replace_port(
                cached.plan if cached is not None else None,
                new_cached.plan if new_cached is not None else None,
            )
        if context_changed:
            tail = {entry.key: entry for entry in self._tail_entries()}
            delta.replace_entries(DispatchRoot.NAT_SERVICES, self._tail, tail)
            self._tail = tail
            static = static_chains(context)
            delta.replace_static(self._static, static)
            self._static = static
        for root, (removals, additions) in delta.entries.items():
            changes = self._trees[root].update(removals, additions)
            delta.merge_dispatch(root.table, changes)
        return delta.build(context.family)

    def _refresh_ports(self, snapshot: Snapshot, reusable: bool) -> None:
        """Bring the per-port cache to ``snapshot``, planning only ports whose inputs changed.

        Nothing is reused across a context change, nor across kube-proxy's large-cluster
        threshold (which the whole snapshot decides, so it is known only after one pass).
        """
        family = self._context.family
        endpoints = snapshot.endpoints
        empty: tuple[Endpoint, ...] = ()
        previous = self._ports if reusable else {}
        inputs: list[tuple[ServicePortName, _Inputs, _Cached | None]] = []
        total = 0
        for name, port in snapshot.services.items():
            port_endpoints = endpoints.get(name, empty)
            cached = previous.get(name)
            if cached is not None and cached.inputs.holds(port, port_endpoints):
                inputs.append((name, cached.inputs, cached))
                total += len(cached.inputs.family_endpoints)
            else:
                port_inputs = _Inputs(port, port_endpoints, family)
                inputs.append((name, port_inputs, None))
                total += len(port_inputs.family_endpoints)
        comments = total <= LARGE_CLUSTER_ENDPOINTS
        reuse_plans = comments == self._endpoint_comments
        self._ports = {}
        self._skipped = {}
        self._total_endpoints = self._no_local_internal = self._no_local_external = 0
        self._endpoint_comments = comments
        for name, port_inputs, cached in inputs:
            if cached is None or not reuse_plans:
                cached = _Cached(port_inputs, self._plan(port_inputs))
            self._store(name, cached)

    def _rebuild_trees(self) -> dict[DispatchRoot, DispatchTree]:
        """New dispatch trees, in their canonical shape, from the cached port plans."""
        entries: dict[DispatchRoot, list[DispatchEntry]] = {root: [] for root in DispatchRoot}
        for cached in self._ports.values():
            if cached.plan is not None:
                for root, entry in cached.plan.entries:
                    entries[root].append(entry)
        tail = self._tail_entries()
        entries[DispatchRoot.NAT_SERVICES].extend(tail)
        self._tail = {entry.key: entry for entry in tail}
        family = self._context.family
        self._trees = {}
        for root in DispatchRoot:
            tree = DispatchTree(root.chain, family, by=root.by, leaf_size=self._leaf_size)
            tree.update((), entries[root])
            self._trees[root] = tree
        return self._trees

    # -- internals --------------------------------------------------------------------------

    def _plan(self, inputs: _Inputs) -> ServicePortPlan | None:
        if inputs.view is None:
            return None
        return plan_service_port(
            inputs.view,
            inputs.family_endpoints,
            self._context,
            endpoint_comments=self._endpoint_comments,
        )

    def _comments_after(self, inputs: Mapping[ServicePortName, _Inputs | None]) -> bool:
        """Whether endpoint rules keep comments once ``inputs`` replace the cached ports."""
        total = self._total_endpoints
        for name, new in inputs.items():
            cached = self._ports.get(name)
            if cached is not None and cached.plan is not None:
                total -= cached.plan.endpoint_count
            if new is not None:
                total += len(new.family_endpoints)
        return total <= LARGE_CLUSTER_ENDPOINTS

    def _store(self, name: ServicePortName, cached: _Cached) -> None:
        self._ports[name] = cached
        if cached.inputs.skipped is not None:
            self._skipped[name] = cached.inputs.skipped
        plan = cached.plan
        if plan is not None:
            self._total_endpoints += plan.endpoint_count
            self._no_local_internal += plan.no_local_internal
            self._no_local_external += plan.no_local_external

    def _forget(self, name: ServicePortName) -> None:
        cached = self._ports.pop(name, None)
        self._skipped.pop(name, None)
        plan = cached.plan if cached is not None else None
        if plan is not None:
            self._total_endpoints -= plan.endpoint_count
            self._no_local_internal -= plan.no_local_internal
            self._no_local_external -= plan.no_local_external

    def _tail_entries(self) -> list[DispatchEntry]:
        """The NodePorts jump(s), as dispatch entries without destination.

        A dispatch root keeps entries without destination after all of its buckets, in
        (protocol, port, rule) order: the rank goes into ``port`` to keep the tail in order.
        """
        return [
            DispatchEntry(("nodeports", rule.rank, rule.rule), None, Protocol.TCP, rule.rank,
                          rule.rule)
            for rule in nodeport_tail_rules(self._context)
        ]


def _inputs_of(snapshot: Snapshot, name: ServicePortName, family: IPFamily) -> _Inputs | None:
    port = snapshot.services.get(name)
    return _Inputs(port, snapshot.endpoints_of(name), family) if port is not None else None


class _DeltaBuilder:
    """Collects the chains a partial sync writes and deletes, and the dispatch tree edits."""

    def __init__(self) -> None:
        self.write: dict[Table, dict[str, Chain]] = {table: {} for table in _TABLE_ORDER}
        self.delete: dict[Table, set[str]] = {table: set() for table in _TABLE_ORDER}
        self.entries: dict[DispatchRoot, tuple[list[Hashable], list[DispatchEntry]]] = {}

    def replace_port(self, old: ServicePortPlan | None, new: ServicePortPlan | None) -> None:
        """One port's plan replaced: its changed chains and dispatch entries."""
        write, delete = self.write[Table.NAT], self.delete[Table.NAT]
        old_chains = {chain.name: chain for chain in old.chains} if old is not None else {}
        new_names: set[str] = set()
        if new is not None:
            for chain in new.chains:
                new_names.add(chain.name)
                if old_chains.get(chain.name) != chain:
                    write[chain.name] = chain
                    delete.discard(chain.name)
        for name in old_chains:
            if name not in new_names and name not in write:
                delete.add(name)
        old_entries = {(root, e.key): e for root, e in old.entries} if old is not None else {}
        new_keys: set[tuple[DispatchRoot, Hashable]] = set()
        if new is not None:
            for root, entry in new.entries:
                new_keys.add((root, entry.key))
                if old_entries.get((root, entry.key)) != entry:
                    self._edits(root)[1].append(entry)
        for root, key in old_entries:
            if (root, key) not in new_keys:
                self._edits(root)[0].append(key)

    def replace_entries(
        self,
        root: DispatchRoot,
        old: Mapping[Hashable, DispatchEntry],
        new: Mapping[Hashable, DispatchEntry],
    ) -> None:
        removals, additions = self._edits(root)
        removals.extend(key for key in old if key not in new)
        additions.extend(entry for key, entry in new.items() if old.get(key) != entry)

    def replace_static(
        self,
        old: Mapping[Table, tuple[Chain, ...]],
        new: Mapping[Table, tuple[Chain, ...]],
    ) -> None:
        for table, chains in new.items():
            before = {chain.name: chain for chain in old.get(table, ())}
            for chain in chains:
                if before.get(chain.name) != chain:
                    self.write[table][chain.name] = chain

    def merge_dispatch(self, table: Table, changes: DispatchChanges) -> None:
        for chain in changes.written:
            self.write[table][chain.name] = chain
        self.delete[table].update(changes.deleted)

    def build(self, family: IPFamily) -> RulesetDelta:
        return RulesetDelta(
            family=family,
            write={table: tuple(chains.values()) for table, chains in self.write.items() if chains},
            delete={table: frozenset(gone) for table, gone in self.delete.items() if gone},
        )

    def _edits(self, root: DispatchRoot) -> tuple[list[Hashable], list[DispatchEntry]]:
        edits = self.entries.get(root)
        if edits is None:
            edits = self.entries[root] = ([], [])
        return edits
