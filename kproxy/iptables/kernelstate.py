"""What a full sync needs to know of the kernel's tables, read in one pass.

A full sync must know which kproxy chains the kernel has (to delete those the plan no longer
has) and whether kproxy's jumps are in the builtin chains (to put back the missing ones, in
the same restore transaction). Both come from one ``iptables-save`` of the family, scanned
without parsing every rule: at 10,000 services the text is ~40 MB, of which only the chain
declarations and the few builtin-chain rules matter.

A jump counts as present when a rule of its builtin chain has the same arguments, token for
token — what ``iptables -C`` checks — so a jump is never added twice, as in kube-proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kproxy.iptables.restore import COMMIT, split_args
from kproxy.iptables.ruleset import BUILTIN_CHAINS, CHAIN_PREFIX, BuiltinJump, Table

_TABLES = {table.value: table for table in Table}
_TABLE_HEADER = re.compile(r"^\*(\S+)[ \t]*$", re.MULTILINE)
_KPROXY_DECLARATION = re.compile("^:(" + re.escape(CHAIN_PREFIX) + r"\S+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class KernelTable:
    """One table as a full sync sees it: kproxy's chains, and the rules of builtin chains."""

    kproxy_chains: frozenset[str] = frozenset()
    builtin_rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def scan_save(text: str) -> dict[Table, KernelTable]:
    """The kproxy chains and builtin-chain rules of each table in ``iptables-save`` text.

    Tables kproxy does not use are skipped; a table missing from the text is absent.
    """
    tables: dict[Table, KernelTable] = {}
    position = 0
    while (header := _TABLE_HEADER.search(text, position)) is not None:
        commit = text.find(f"\n{COMMIT}", header.end())
        if commit < 0:
            break
        table = _TABLES.get(header.group(1))
        if table is not None:
            tables[table] = _scan_table(table, text, header.end(), commit)
        position = commit + len(COMMIT) + 1
    return tables


def _scan_table(table: Table, text: str, start: int, end: int) -> KernelTable:
    chains = frozenset(_KPROXY_DECLARATION.findall(text, start, end))
    rules: dict[str, list[str]] = {chain: [] for chain in BUILTIN_CHAINS[table]}
    for chain, found in rules.items():
        head = f"\n-A {chain} "
        at = text.find(head, start, end)
        while at >= 0:
            line_end = text.find("\n", at + 1, end + 1)
            found.append(text[at + len(head):line_end if line_end >= 0 else end].rstrip())
            at = text.find(head, at + 1, end)
    return KernelTable(chains, {chain: tuple(found) for chain, found in rules.items()})


def missing_jumps(jumps: Iterable[BuiltinJump],
                  tables: Mapping[Table, KernelTable]) -> tuple[BuiltinJump, ...]:
    """The jumps no rule of their builtin chain matches (argument for argument)."""
    present: dict[tuple[Table, str], set[tuple[str, ...]]] = {}
    missing: list[BuiltinJump] = []
    for jump in jumps:
        key = (jump.table, jump.chain)
        if key not in present:
            kernel = tables.get(jump.table)
            rules: Sequence[str] = kernel.builtin_rules.get(jump.chain, ()) if kernel else ()
            # Only rules that could be ours are tokenized (builtin chains may be long).
            present[key] = {tuple(split_args(rule)) for rule in rules if CHAIN_PREFIX in rule}
        if tuple(split_args(jump.args)) not in present[key]:
            missing.append(jump)
    return tuple(missing)


_NFT_TABLE = re.compile(r"^table (?:ip|ip6) (\S+) \{", re.MULTILINE)
_NFT_CHAIN = re.compile(r'^\s+chain "?([^\s"{]+)"? \{', re.MULTILINE)


def parse_nft_chains(text: str) -> dict[str, set[str]]:
    """Chain names per table name in ``nft list chains ip`` (or ``ip6``) output.

    iptables-nft cannot list 100,000 chains (``iptables-nft-save`` and ``-S`` crash there),
    while ``nft list chains`` prints names only, in a second or so.
    """
    tables: dict[str, set[str]] = {}
    headers = list(_NFT_TABLE.finditer(text))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        tables.setdefault(header.group(1), set()).update(
            _NFT_CHAIN.findall(text, header.end(), end))
    return tables


def listed_rules(text: str, chain: str) -> tuple[str, ...]:
    """The rules of ``chain`` in ``iptables -S CHAIN`` output (its ``-P`` line skipped)."""
    head = f"-A {chain} "
    return tuple(line[len(head):].rstrip() for line in text.splitlines()
                 if line.startswith(head))


def kernel_table(chains: Iterable[str],
                 builtin_rules: Mapping[str, tuple[str, ...]]) -> KernelTable:
    """A :class:`KernelTable` from every chain name of a table and its builtin chains' rules."""
    return KernelTable(frozenset(name for name in chains if name.startswith(CHAIN_PREFIX)),
                       dict(builtin_rules))
