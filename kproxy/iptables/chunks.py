"""A full sync in several transactions, for rulesets too big for one (iptables-nft).

iptables-nft 1.8.9 needs about ten minutes for one ``--noflush`` transaction holding 110,000
chains (its chain lookup is linear in the chains of the transaction), while the same payload
in transactions of a few thousand chains each loads in well under a minute. The price is
that the full sync is no longer atomic as a whole; each transaction still is, and their
order keeps every packet on a complete path:

1. one transaction declares the chains the kernel does not have yet (descending name order,
   which iptables-nft looks up fastest); they are empty and nothing jumps to them yet;
2. then the chains are written, whole, a group of ``chunk_chains`` per transaction, leaves
   first: a chain is written only after (or together with) every chain it jumps to, so a
   rule that makes something reachable only ever points at a chain already complete. The
   dispatch roots, which make new services reachable, are written last;
3. the last transaction also adds the missing builtin-chain jumps and deletes the chains of
   services that are gone (nothing refers to them any more by then); when those are many,
   steps of their own follow: flushes first, then deletions.

A chain that already exists keeps its old rules until its own transaction replaces them, so
traffic keeps flowing through the old rules meanwhile. A failure part way leaves a mix of
complete old and complete new chains; the next sync is full and finishes the job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from kproxy.iptables.restore import (
    COMMIT,
    jump_target,
    jumps_by_table,
    render_full_replacing,
    rule_blocks,
    stale_chains,
)
from kproxy.iptables.ruleset import BuiltinJump, Chain, Ruleset, Table

# Above this many chains in one table, iptables-nft's single transaction gets slow (minutes
# at 110,000); below it, one atomic transaction costs little.
DEFAULT_THRESHOLD_CHAINS = 20_000
DEFAULT_CHUNK_CHAINS = 5_000


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """When a backend wants a full sync split up, and into transactions of what size."""

    threshold_chains: int = DEFAULT_THRESHOLD_CHAINS
    chunk_chains: int = DEFAULT_CHUNK_CHAINS

    def __post_init__(self) -> None:
        if self.threshold_chains < 1 or self.chunk_chains < 1:
            raise ValueError(f"chunk sizes must be positive: {self}")

    def applies(self, ruleset: Ruleset,
                existing_kproxy_chains: Mapping[Table, Iterable[str]] | None = None) -> bool:
        """Whether a table of the plan, or of the kernel now, is over the threshold."""
        counts = [len(rules.chains) for rules in ruleset.tables.values()]
        counts += [len(set(names)) for names in (existing_kproxy_chains or {}).values()]
        return any(count > self.threshold_chains for count in counts)


def render_full_chunked(
    ruleset: Ruleset,
    existing_kproxy_chains: Mapping[Table, Iterable[str]],
    jumps: Iterable[BuiltinJump],
    chunk_chains: int,
) -> Iterator[dict[Table, str]]:
    """The payloads of a chunked full sync, one transaction each, in the order to apply.

    Tables with at most ``chunk_chains`` chains get one transaction, as in
    :func:`render_full_replacing`. Rendered lazily: only one chunk's text exists at a time.
    """
    jump_lines = jumps_by_table(jumps)
    tables = list(dict.fromkeys([*ruleset.tables, *existing_kproxy_chains, *jump_lines]))
    for table in tables:
        rules = ruleset.tables.get(table)
        chains = rules.chains if rules is not None else {}
        existing = set(existing_kproxy_chains.get(table, ()))
        stale = stale_chains(ruleset, table, existing)
        if len(chains) <= chunk_chains and len(stale) <= chunk_chains:
            single = Ruleset(ruleset.family, {table: rules} if rules is not None else {})
            jumps_here = [jump for jump in jumps if jump.table is table]
            payload = render_full_replacing(single, {table: existing}, jumps_here)
            if payload:
                yield payload
            continue
        yield from _chunked_table(table, chains, existing, stale,
                                  jump_lines.get(table, []), chunk_chains)


def _chunked_table(table: Table, chains: Mapping[str, Chain], existing: set[str],
                   stale: list[str], jump_lines: list[str],
                   chunk_chains: int) -> Iterator[dict[Table, str]]:
    new = sorted((name for name in chains if name not in existing), reverse=True)
    if new:
        yield {table: _transaction(table, [f":{name} - [0:0]" for name in new])}
    order = leaves_first(chains)
    # Few stale chains go with the last group; many get steps of their own after it (all
    # flushed first, so that none is still referenced when it is deleted).
    stale_alone = len(stale) > chunk_chains
    for start in range(0, max(len(order), 1), chunk_chains):
        group = order[start:start + chunk_chains]
        last = start + chunk_chains >= len(order)
        lines = [f":{chain.name} - [0:0]" for chain in group]
        if last and not stale_alone:
            lines += [f":{name} - [0:0]" for name in stale]
        lines += rule_blocks(group)
        if last:
            lines += jump_lines
            if not stale_alone:
                lines += [f"-X {name}" for name in stale]
        yield {table: _transaction(table, lines)}
    if stale_alone:
        for start in range(0, len(stale), chunk_chains):
            group_names = stale[start:start + chunk_chains]
            yield {table: _transaction(table, [f":{name} - [0:0]" for name in group_names])}
        for start in range(0, len(stale), chunk_chains):
            group_names = stale[start:start + chunk_chains]
            yield {table: _transaction(table, [f"-X {name}" for name in group_names])}


def _transaction(table: Table, lines: list[str]) -> str:
    return "\n".join([f"*{table.value}", *lines, COMMIT, ""])


def leaves_first(chains: Mapping[str, Chain]) -> list[Chain]:
    """Every chain after all the chains (of ``chains``) it jumps to; raises on a loop.

    Depth-first from each chain in descending name order, emitting a chain once its
    targets are; ties keep that order, so the result is deterministic.
    """
    targets: dict[str, list[str]] = {}
    for name, chain in chains.items():
        found = {jump_target(rule) for rule in chain.rules}
        targets[name] = sorted((t for t in found if t is not None and t in chains),
                               reverse=True)
    order: list[Chain] = []
    done: set[str] = set()
    on_path: set[str] = set()
    for root in sorted(chains, reverse=True):
        if root in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(targets[root]))]
        on_path.add(root)
        while stack:
            name, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                on_path.discard(name)
                done.add(name)
                order.append(chains[name])
            elif child in on_path:
                raise ValueError(f"chains jump in a loop through {child!r}")
            elif child not in done:
                on_path.add(child)
                stack.append((child, iter(targets[child])))
    return order
