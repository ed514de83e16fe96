"""The backend that runs the iptables tools: ``iptables-restore`` (nft or legacy) and friends.

A sync is one ``iptables-restore -w 5 -W 100000 --noflush --counters`` process per family,
all tables in its input, streamed table by table; each table's block commits atomically (a
failure in a later table leaves the earlier ones applied, which the next full sync repairs).
A full sync learns what the kernel has from one ``iptables-save`` of the family
(:meth:`RestoreBackend.read_tables`) and puts missing builtin-chain jumps into its own
payload. iptables-nft splits big full syncs into several transactions (see
:mod:`kproxy.iptables.chunks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kproxy.config.record import IptablesBackend
from kproxy.iptables.backend import (
    RESTORE_ARGS,
    WAIT_ARGS,
    CommandError,
    CommandResult,
    CommandRunner,
    restore_error,
    run_command,
)
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.kernelstate import (
    KernelTable,
    kernel_table,
    listed_rules,
    parse_nft_chains,
    scan_save,
)
from kproxy.iptables.restore import TableText, jump_target, split_args, table_pieces
from kproxy.iptables.ruleset import BUILTIN_CHAINS, CHAIN_PREFIX, BuiltinJump, Table
from kproxy.model.types import IPFamily

# iptables' exit status for "the rule/chain is not there" (as opposed to a usage error).
_NOT_FOUND = 1
_NO_PROGRAM = 127
_NFT_FAMILY = {IPFamily.IPV4: "ip", IPFamily.IPV6: "ip6"}
# Bound on deleting duplicates of one jump, so a misbehaving tool cannot loop forever.
_MAX_DUPLICATES = 100


class RestoreBackend:
    """Drives ``iptables-<variant>-restore`` / ``-save`` / ``iptables-<variant>`` commands."""

    def __init__(self, variant: IptablesBackend, *, command_prefix: Sequence[str] = (),
                 runner: CommandRunner = run_command,
                 chunking: ChunkPolicy | None = None) -> None:
        """``chunking`` applies to nft only (default :class:`ChunkPolicy`); legacy replaces
        a whole table per transaction anyway, so one transaction costs it nothing more."""
        if variant not in (IptablesBackend.NFT, IptablesBackend.LEGACY):
            raise ValueError(f"iptables-restore comes in nft and legacy, not {variant}")
        self._variant = variant
        self._chunking = (chunking or ChunkPolicy()) if variant is IptablesBackend.NFT else None
        self._prefix = tuple(command_prefix)
        self._run = runner
        self._families: tuple[IPFamily, ...] | None = None

    def __repr__(self) -> str:
        return f"RestoreBackend({self._variant.value!r}, command_prefix={self._prefix!r})"

    @property
    def name(self) -> str:
        return self._variant.value

    def program(self, family: IPFamily, tool: str = "") -> str:
        """e.g. ``ip6tables-nft-restore`` for (IPv6, "restore")."""
        base = "ip6tables" if family is IPFamily.IPV6 else "iptables"
        suffix = f"-{tool}" if tool else ""
        return f"{base}-{self._variant.value}{suffix}"

    def families(self) -> tuple[IPFamily, ...]:
        if self._families is None:
            # kube-proxy's presence check: can this variant list the nat table here?
            self._families = tuple(
                family for family in IPFamily
                if self._command(family, "-t", "nat", "-S", "POSTROUTING").ok
            )
        return self._families

    @property
    def chunking(self) -> ChunkPolicy | None:
        return self._chunking

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        self.restore_all(family, {table: text})

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        texts = tuple(piece for text in payloads.values() for piece in table_pieces(text)
                      if piece)
        if not texts:
            return
        argv = [*self._prefix, self.program(family, "restore"), *WAIT_ARGS, *RESTORE_ARGS]
        result = self._run(argv, texts, timeout=None)
        if not result.ok:
            raise restore_error(result, texts)

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        argv = [*self._prefix, self.program(family, "save")]
        if table is not None:
            argv += ["-t", table.value]
        result = self._run(argv, timeout=None)
        if not result.ok:
            raise CommandError(result)
        return result.stdout

    def ensure_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        inserted = 0
        for jump in jumps:
            spec = split_args(jump.args)
            check = self._command(family, "-t", jump.table.value, "-C", jump.chain, *spec)
            if check.ok:
                continue
            if check.returncode != _NOT_FOUND:
                raise CommandError(check)
            where = ("-I", jump.chain, "1") if jump.first else ("-A", jump.chain)
            self._checked(family, "-t", jump.table.value, *where, *spec)
            inserted += 1
        return inserted

    def remove_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        removed = 0
        for jump in jumps:
            spec = split_args(jump.args)
            for _ in range(_MAX_DUPLICATES):
                deleted = self._command(family, "-t", jump.table.value, "-D", jump.chain, *spec)
                if deleted.ok:
                    removed += 1
                    continue
                if deleted.returncode != _NOT_FOUND and self._target_exists(family, jump):
                    raise CommandError(deleted)
                break
        return removed

    def read_tables(self, family: IPFamily) -> dict[Table, KernelTable]:
        if self._variant is IptablesBackend.NFT:
            listed = self._run([*self._prefix, "nft", "list", "chains", _NFT_FAMILY[family]],
                               timeout=None)
            if listed.ok:
                return self._nft_tables(family, parse_nft_chains(listed.stdout))
            if listed.returncode != _NO_PROGRAM:
                raise CommandError(listed)
            # Without the nft tool (nftables package), iptables-nft-save it is: it cannot
            # list ~100,000 chains (it crashes), below that it works.
        return scan_save(self.save(family))

    def _nft_tables(self, family: IPFamily,
                    chains: Mapping[str, set[str]]) -> dict[Table, KernelTable]:
        # One -S per builtin chain that exists (iptables-nft creates them on first use):
        # iptables-nft lists one chain without fetching the rest of the table.
        tables: dict[Table, KernelTable] = {}
        for table in Table:
            names = chains.get(table.value)
            if names is None:
                continue
            rules = {
                chain: listed_rules(
                    self._checked(family, "-t", table.value, "-S", chain).stdout, chain)
                for chain in BUILTIN_CHAINS[table] if chain in names
            }
            tables[table] = kernel_table(names, rules)
        return tables

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        found = self.read_tables(family).get(table)
        return set(found.kproxy_chains) if found is not None else set()

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        listed = self._command(family, "-t", table.value, "-S", chain)
        if listed.ok:
            return True
        if listed.returncode == _NOT_FOUND:
            return False
        raise CommandError(listed)

    def _target_exists(self, family: IPFamily, jump: BuiltinJump) -> bool:
        # A jump to a chain that no longer exists cannot exist either: iptables then fails
        # with a usage error instead of "not found", which is fine to treat as gone.
        target = jump_target(jump.args)
        if target is None or not target.startswith(CHAIN_PREFIX):
            return True
        return self.chain_exists(family, jump.table, target)

    def _command(self, family: IPFamily, *args: str) -> CommandResult:
        return self._run([*self._prefix, self.program(family), *WAIT_ARGS, *args])

    def _checked(self, family: IPFamily, *args: str) -> CommandResult:
        result = self._command(family, *args)
        if not result.ok:
            raise CommandError(result)
        return result
