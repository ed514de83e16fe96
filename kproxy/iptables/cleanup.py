"""Remove everything kproxy put in iptables, and nothing else (``kproxy cleanup``).

Per family and table (nat, filter, mangle): the rules in builtin chains that carry kproxy's
comment (``kproxy ...``) are deleted, and every ``KPROXY-`` chain is flushed and deleted, in
one atomic restore transaction per table. A kproxy chain that a foreign rule still jumps to
is flushed but kept (deleting it would fail the whole transaction), and reported.

It reads the kernel (``iptables-save``) to find what is there, so running it twice is fine:
the second run finds nothing. One call cleans one backend; to clean both iptables variants,
call it with an nft and a legacy backend.

Both proxy modes' chains carry the prefix, so a plain cleanup removes both. A cleanup can be
limited to some of kproxy's chains (``owned``, e.g. one mode's: see
:func:`iptables_mode_chain` and :func:`userspace_mode_chain`); it then removes only those
chains and the builtin-chain rules that jump to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kproxy.iptables.backend import Backend, BackendError
from kproxy.iptables.restore import (
    COMMIT,
    ParsedTable,
    jump_target,
    parse_save,
    tokenize_args,
)
from kproxy.iptables.ruleset import JUMP_COMMENT_PREFIX, Table
from kproxy.model.types import IPFamily
from kproxy.userspace.chains import is_userspace_chain

CLEANED_TABLES = (Table.NAT, Table.FILTER, Table.MANGLE)


@dataclass(frozen=True, slots=True)
class TableCleanup:
    """What cleaning one table takes: builtin-chain rules to delete, chains to remove."""

    table: Table
    jumps: tuple[tuple[str, str], ...]  # (builtin chain, rule arguments)
    deleted_chains: tuple[str, ...]
    kept_chains: tuple[str, ...]  # flushed, but still the target of someone else's rule

    @property
    def empty(self) -> bool:
        return not self.jumps and not self.deleted_chains and not self.kept_chains

    def render(self) -> str:
        """The restore payload: flush every kproxy chain, delete the jumps, then the chains."""
        lines = [f"*{self.table.value}"]
        lines += [f":{name} - [0:0]" for name in (*self.deleted_chains, *self.kept_chains)]
        lines += [f"-D {chain} {args}" for chain, args in self.jumps]
        lines += [f"-X {name}" for name in self.deleted_chains]
        lines += [COMMIT, ""]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CleanupReport:
    removed_jumps: tuple[tuple[IPFamily, Table, str, str], ...] = ()
    deleted_chains: tuple[tuple[IPFamily, Table, str], ...] = ()
    kept_chains: tuple[tuple[IPFamily, Table, str], ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def is_kproxy_jump(args: str) -> bool:
    """Whether a builtin chain's rule is kproxy's: its comment starts with ``kproxy ``."""
    if "--comment" not in args:
        return False
    tokens = tokenize_args(args)
    return any(
        token.text == "--comment" and not token.quoted and index + 1 < len(tokens)
        and tokens[index + 1].text.startswith(JUMP_COMMENT_PREFIX)
        for index, token in enumerate(tokens)
    )


ChainSelector = Callable[[str], bool]


def userspace_mode_chain(name: str) -> bool:
    """A chain of userspace mode (its portals)."""
    return is_userspace_chain(name)


def iptables_mode_chain(name: str) -> bool:
    """A kproxy chain of iptables mode: every one that is not userspace mode's."""
    return not is_userspace_chain(name)


def plan_table_cleanup(parsed: ParsedTable, owned: ChainSelector | None = None) -> TableCleanup:
    """What to remove from one table, given its ``iptables-save`` content (pure).

    ``owned`` limits the cleanup to the kproxy chains it accepts, and to the kproxy rules of
    builtin chains that jump to those; None removes everything kproxy's.
    """
    ours = sorted(name for name in parsed.kproxy_chains() if owned is None or owned(name))
    selected = set(ours)
    jumps: list[tuple[str, str]] = []
    still_referenced: set[str] = set()
    for name, chain in parsed.chains.items():
        if name in selected:
            continue
        for args in chain.rules:
            if chain.policy is not None and is_kproxy_jump(args) and (
                owned is None or jump_target(args) in selected
            ):
                jumps.append((name, args))
                continue
            target = jump_target(args)
            if target is not None and target in selected:
                still_referenced.add(target)
    deleted = tuple(name for name in ours if name not in still_referenced)
    kept = tuple(name for name in ours if name in still_referenced)
    return TableCleanup(parsed.table, tuple(jumps), deleted, kept)


def cleanup(backend: Backend, families: Iterable[IPFamily] | None = None,
            owned: ChainSelector | None = None) -> CleanupReport:
    """Remove kproxy's rules and chains (or only the ``owned`` ones) from every table of every
    family; see the module doc.

    Failures are collected in the report (and the other tables still cleaned), not raised.
    """
    removed: list[tuple[IPFamily, Table, str, str]] = []
    deleted: list[tuple[IPFamily, Table, str]] = []
    kept: list[tuple[IPFamily, Table, str]] = []
    errors: list[str] = []
    for family in families if families is not None else backend.families():
        try:
            # All tables at once: asking for one table would create it in legacy iptables.
            tables = parse_save(backend.save(family))
        except (BackendError, ValueError) as exc:
            errors.append(f"{family}: cannot read iptables: {exc}")
            continue
        for table in CLEANED_TABLES:
            parsed = tables.get(table)
            if parsed is None:
                continue
            plan = plan_table_cleanup(parsed, owned)
            if plan.empty:
                continue
            try:
                backend.restore(family, table, plan.render())
            except BackendError as exc:
                errors.append(f"{family} {table}: {exc}")
                continue
            removed += [(family, table, chain, args) for chain, args in plan.jumps]
            deleted += [(family, table, name) for name in plan.deleted_chains]
            kept += [(family, table, name) for name in plan.kept_chains]
    return CleanupReport(tuple(removed), tuple(deleted), tuple(kept), tuple(errors))

