"""The planned ruleset: what kproxy wants in the kernel for one IP family.

The planner (pure) produces these records; the restore module renders them as
``iptables-restore --noflush`` text; backends apply that text (or the records themselves, for
the libiptc backend); the in-memory fake parses the text back and validates it.

A rule is kept as its argument string exactly as ``iptables-save`` prints it after
``-A CHAIN`` (e.g. ``-m comment --comment "default/web:http" -j KPROXY-SVC-ABC``): that is the
form every backend can consume, and comparing two rulesets is comparing strings.

Every chain kproxy owns starts with :data:`CHAIN_PREFIX`. kproxy never flushes or deletes a
chain without that prefix; in builtin chains (PREROUTING, OUTPUT, ...) it only inserts and
deletes its own :class:`BuiltinJump` rules, recognised by their comment.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from kproxy.model.types import IPFamily

CHAIN_PREFIX = "KPROXY-"
# iptables' limit on chain names (XT_EXTENSION_MAXNAMELEN - 1 = 28 usable characters).
MAX_CHAIN_NAME = 28
# The comment on every rule kproxy puts in a builtin chain; cleanup finds them by it.
JUMP_COMMENT_PREFIX = "kproxy "


class Table(enum.StrEnum):
    NAT = "nat"
    FILTER = "filter"
    MANGLE = "mangle"


BUILTIN_CHAINS: Mapping[Table, tuple[str, ...]] = {
    Table.NAT: ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    Table.FILTER: ("INPUT", "FORWARD", "OUTPUT"),
    Table.MANGLE: ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}


@dataclass(frozen=True, slots=True)
class Chain:
    """One kproxy-owned chain and its rules in order (argument strings after ``-A NAME``)."""

    name: str
    rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(CHAIN_PREFIX) or len(self.name) > MAX_CHAIN_NAME:
            raise ValueError(f"not a kproxy chain name: {self.name!r}")


@dataclass(frozen=True, slots=True)
class BuiltinJump:
    """A rule kproxy keeps in a builtin chain to enter its own chains.

    ``args`` must contain ``-m comment --comment "kproxy ..."`` so that it can be found
    (and removed) without touching anyone else's rules. ``first`` asks for the rule to be
    inserted at the top of the builtin chain (kube-proxy inserts its jumps first).
    """

    table: Table
    chain: str
    args: str
    first: bool = True


@dataclass(frozen=True, slots=True)
class TableRules:
    """The kproxy chains of one table, in the order they should be declared."""

    table: Table
    chains: Mapping[str, Chain] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything kproxy wants in one family's tables after a full sync."""

    family: IPFamily
    tables: Mapping[Table, TableRules]
    jumps: tuple[BuiltinJump, ...] = ()

    def chain_names(self, table: Table) -> frozenset[str]:
        rules = self.tables.get(table)
        return frozenset(rules.chains) if rules is not None else frozenset()

    @property
    def rule_count(self) -> int:
        return sum(
            len(chain.rules) for rules in self.tables.values() for chain in rules.chains.values()
        )


@dataclass(frozen=True, slots=True)
class RulesetDelta:
    """What a partial sync writes: chains (re)written in full, chains deleted.

    Rendered as one ``--noflush`` transaction: written chains are declared (which flushes
    them) and refilled; deleted chains are flushed then removed, after every rule that
    jumped to them is gone. Chains not mentioned are left as they are in the kernel.
    """

    family: IPFamily
    write: Mapping[Table, tuple[Chain, ...]]
    delete: Mapping[Table, frozenset[str]]

    @property
    def empty(self) -> bool:
        return not any(self.write.values()) and not any(self.delete.values())
