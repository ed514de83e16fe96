"""The backend that runs the iptables tools: ``iptables-restore`` (nft or legacy) and friends.

A sync is one ``iptables-restore -w 5 -W 100000 --noflush --counters`` process per family,
all tables in its input; each table's block commits atomically (a failure in a later table
leaves the earlier ones applied, which the next full sync repairs). Jumps from builtin chains
are checked with ``-C`` and inserted with ``-I``, one command each, as kube-proxy does.
"""

from __future__ import annotations

import re
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
from kproxy.iptables.restore import join_payloads, jump_target, split_args
from kproxy.iptables.ruleset import CHAIN_PREFIX, BuiltinJump, Table
from kproxy.model.types import IPFamily

# iptables' exit status for "the rule/chain is not there" (as opposed to a usage error).
_NOT_FOUND = 1
# Bound on deleting duplicates of one jump, so a misbehaving tool cannot loop forever.
_MAX_DUPLICATES = 100
_KPROXY_DECLARATION = re.compile("^:(" + re.escape(CHAIN_PREFIX) + r"\S+)", re.MULTILINE)


class RestoreBackend:
    """Drives ``iptables-<variant>-restore`` / ``-save`` / ``iptables-<variant>`` commands."""

    def __init__(self, variant: IptablesBackend, *, command_prefix: Sequence[str] = (),
                 runner: CommandRunner = run_command) -> None:
        if variant not in (IptablesBackend.NFT, IptablesBackend.LEGACY):
            raise ValueError(f"iptables-restore comes in nft and legacy, not {variant}")
        self._variant = variant
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

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        self.restore_all(family, {table: text})

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, str]) -> None:
        text = join_payloads(payloads)
        if not text:
            return
        argv = [*self._prefix, self.program(family, "restore"), *WAIT_ARGS, *RESTORE_ARGS]
        result = self._run(argv, text, timeout=None)
        if not result.ok:
            raise restore_error(result, text)

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

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        return set(_KPROXY_DECLARATION.findall(self.save(family, table)))

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
