"""An in-memory iptables that checks restore payloads the way the kernel does.

:class:`FakeIptables` keeps chains and rules per family and table and applies exactly the
text a real backend would get. Each ``*table ... COMMIT`` block is one transaction, applied
line by line against the state so far and rejected as a whole (nothing changes) when a line
would fail in the kernel:

- a jump (``-j X`` / ``-g X``) to a chain that does not exist at that point (the kernel
  too wants a chain declared before the first rule that jumps to it), or to a builtin chain;
- a rule for, or a flush/delete of, a chain that does not exist;
- deleting (``-X``) a chain that still has rules, or that a rule of any chain jumps to;
- an unknown table, a missing ``COMMIT``, a chain name over 28 characters, a chain named
  like a target, a user chain declared with a policy, a DNAT to a port without ``-p``.

Two checks are stricter than the kernel, because they only ever catch rendering bugs: a
chain declared twice in one transaction, and a builtin chain declared with ``-`` as policy
(both accepted silently by iptables-restore).

With ``complete_targets=True`` it also checks what a full sync split into several
transactions (:mod:`kproxy.iptables.chunks`) promises: a chain created by a transaction of
declarations only is a placeholder, and a rule jumping to it is rejected until a later
transaction has written it; and a kproxy chain is only ever written whole, in the
transaction that declares (flushes) it — never appended to across transactions.

It counts what it was asked to write (:attr:`FakeIptables.transactions`,
:attr:`FakeIptables.last_transaction_lines`) so that tests can assert that a sync without
changes writes nothing. :class:`FakeBackend` puts the backend interface on top.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kproxy.iptables.backend import BackendError, RestoreError
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.kernelstate import KernelTable
from kproxy.iptables.restore import (
    Op,
    RestoreCommand,
    RestoreSyntaxError,
    RestoreTransaction,
    TableText,
    iter_restore,
    join_payloads,
    jump_target,
    table_text,
)
from kproxy.iptables.ruleset import (
    BUILTIN_CHAINS,
    CHAIN_PREFIX,
    MAX_CHAIN_NAME,
    BuiltinJump,
    Table,
)
from kproxy.model.types import IPFamily

# Verdicts and the target extensions kproxy's rules (and common neighbours) use: a jump to
# anything else names a chain.
STANDARD_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
EXTENSION_TARGETS = frozenset({
    "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP", "MARK", "CONNMARK", "REJECT", "LOG",
    "NFLOG", "CT", "NOTRACK", "TPROXY", "TCPMSS", "CLASSIFY", "CHECKSUM", "TRACE", "AUDIT",
})
BUILTIN_POLICIES = frozenset({"ACCEPT", "DROP"})
_TABLES = {table.value: table for table in Table}
_DNAT_PROTOCOLS = (" -p tcp", " -p udp", " -p sctp", " -p dccp")


@dataclass(slots=True)
class _Chain:
    policy: str | None  # None: a user-defined chain
    rules: list[str] = field(default_factory=list)
    # Per rule, the chain it jumps to ("" when it jumps to no chain), for reference counts.
    jumps: list[str] = field(default_factory=list)

    def copy(self) -> _Chain:
        return _Chain(self.policy, list(self.rules), list(self.jumps))


@dataclass(slots=True)
class _Table:
    chains: dict[str, _Chain]
    references: Counter[str] = field(default_factory=Counter)
    # Chains created by a declarations-only transaction and not written since (checked
    # with complete_targets only).
    placeholders: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls, table: Table) -> _Table:
        return cls({name: _Chain("ACCEPT") for name in BUILTIN_CHAINS[table]})


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """One table transaction the fake was given, and whether it was committed."""

    family: IPFamily
    table: str
    lines: int
    committed: bool
    error: str | None = None


class _Rejected(Exception):
    def __init__(self, command: RestoreCommand | None, reason: str) -> None:
        super().__init__(reason)
        self.command = command
        self.reason = reason


class _Transaction:
    """Applies commands to an overlay of one table; the base only changes on commit."""

    def __init__(self, kind: Table, base: _Table, complete_targets: bool = False) -> None:
        self.kind = kind
        self.base = base
        self.complete_targets = complete_targets
        self.created: set[str] = set()
        self.wrote_rules = False
        self.builtins = frozenset(BUILTIN_CHAINS[kind])
        self.overlay: dict[str, _Chain | None] = {}  # None: deleted in this transaction
        self.reference_delta: Counter[str] = Counter()
        self.declared: set[str] = set()

    def view(self, name: str) -> _Chain | None:
        if name in self.overlay:
            return self.overlay[name]
        return self.base.chains.get(name)

    def writable(self, command: RestoreCommand) -> _Chain:
        chain = self.overlay.get(command.chain)
        if chain is not None:
            return chain
        current = self.view(command.chain)
        if current is None:
            raise _Rejected(command, f"no chain {command.chain!r}")
        chain = self.overlay[command.chain] = current.copy()
        return chain

    def apply(self, command: RestoreCommand) -> None:
        op = command.op
        if (self.complete_targets and op in (Op.APPEND, Op.INSERT)
                and command.chain.startswith(CHAIN_PREFIX)
                and command.chain not in self.declared):
            raise _Rejected(command, f"chain {command.chain!r} written across transactions "
                                     "(not declared in this one)")
        if op in (Op.APPEND, Op.INSERT, Op.DELETE_RULE):
            self.wrote_rules = True
        if op is Op.APPEND:
            chain = self.writable(command)
            chain.jumps.append(self.checked_jump(command))
            chain.rules.append(command.args)
        elif op is Op.DECLARE:
            self.declare(command)
        elif op is Op.INSERT:
            self.insert(command)
        elif op is Op.DELETE_RULE:
            self.delete_rule(command)
        elif op is Op.DELETE_CHAIN:
            self.delete_chain(command)
        elif op is Op.FLUSH:
            self.flush(self.writable(command))
        elif op is Op.NEW_CHAIN:
            if self.view(command.chain) is not None:
                raise _Rejected(command, f"chain {command.chain!r} already exists")
            self.declare(command)
        else:  # pragma: no cover - every Op is handled above
            raise _Rejected(command, f"unsupported {op}")

    def declare(self, command: RestoreCommand) -> None:
        name = command.chain
        if len(name) > MAX_CHAIN_NAME:
            raise _Rejected(command, f"chain name {name!r} over {MAX_CHAIN_NAME} characters")
        if name in self.builtins:
            if command.policy not in BUILTIN_POLICIES:
                raise _Rejected(command, f"builtin chain {name} needs ACCEPT or DROP")
            # A builtin's declaration sets its policy and, with --noflush, keeps its rules.
            self.writable(command).policy = command.policy
            return
        if command.policy != "-":
            raise _Rejected(command, f"cannot set a policy on user chain {name!r}")
        if name in STANDARD_TARGETS or name in EXTENSION_TARGETS:
            raise _Rejected(command, f"chain name {name!r} clashes with a target")
        if name in self.declared:
            raise _Rejected(command, f"chain {name!r} declared twice")
        self.declared.add(name)
        existing = self.view(name)
        if existing is not None:
            # Flushing: the old rules' jumps go (without copying rules that are dropped).
            self.reference_delta.subtract(jump for jump in existing.jumps if jump)
        else:
            self.created.add(name)
        self.overlay[name] = _Chain(None)

    def flush(self, chain: _Chain) -> None:
        self.reference_delta.subtract(jump for jump in chain.jumps if jump)
        chain.rules.clear()
        chain.jumps.clear()

    def insert(self, command: RestoreCommand) -> None:
        chain = self.writable(command)
        index = max(command.position - 1, 0)
        if index > len(chain.rules):
            raise _Rejected(command, f"index of insertion too big ({command.position})")
        jump = self.checked_jump(command)
        chain.rules.insert(index, command.args)
        chain.jumps.insert(index, jump)

    def delete_rule(self, command: RestoreCommand) -> None:
        current = self.view(command.chain)
        if current is None:
            raise _Rejected(command, f"no chain {command.chain!r}")
        if command.position:
            index = command.position - 1
            if index >= len(current.rules):
                raise _Rejected(command, f"no rule number {command.position}")
        elif command.args in current.rules:
            index = current.rules.index(command.args)
        else:
            raise _Rejected(command, "bad rule (does a matching rule exist in that chain?)")
        chain = self.writable(command)
        del chain.rules[index]
        jump = chain.jumps.pop(index)
        if jump:
            self.reference_delta[jump] -= 1

    def delete_chain(self, command: RestoreCommand) -> None:
        name = command.chain
        chain = self.view(name)
        if chain is None:
            raise _Rejected(command, f"no chain {name!r}")
        if name in self.builtins:
            raise _Rejected(command, f"cannot delete builtin chain {name}")
        if chain.rules:
            raise _Rejected(command, f"chain {name!r} is not empty")
        if self.base.references[name] + self.reference_delta[name] > 0:
            raise _Rejected(command, f"chain {name!r} is still referenced")
        self.overlay[name] = None
        self.declared.discard(name)

    def checked_jump(self, command: RestoreCommand) -> str:
        """The chain ``command``'s rule jumps to ("" for none), after checking it may."""
        target = jump_target(command.args)
        if target is None or target in STANDARD_TARGETS:
            return ""
        if target in EXTENSION_TARGETS:
            if target == "DNAT" and _dnat_needs_protocol(command.args):
                raise _Rejected(command, "DNAT to a port needs -p tcp, udp, sctp or dccp")
            return ""
        if target in self.builtins:
            raise _Rejected(command, f"cannot jump to builtin chain {target}")
        if self.view(target) is None:
            raise _Rejected(command, f"jump to chain {target!r}, which does not exist")
        if (self.complete_targets and target in self.base.placeholders
                and target not in self.declared):
            raise _Rejected(command, f"jump to chain {target!r}, which an earlier "
                                     "transaction only declared (not complete yet)")
        self.reference_delta[target] += 1
        return target

    def commit(self) -> None:
        placeholders = self.base.placeholders
        placeholders.difference_update(self.declared)
        placeholders.difference_update(
            name for name, chain in self.overlay.items() if chain is None)
        if not self.wrote_rules:
            placeholders.update(self.created)
        chains = self.base.chains
        for name, chain in self.overlay.items():
            if chain is None:
                chains.pop(name, None)
            else:
                chains[name] = chain
        references = self.base.references
        references.update(self.reference_delta)
        for name in [name for name, count in self.reference_delta.items()
                     if references[name] <= 0]:
            del references[name]


def _dnat_needs_protocol(args: str) -> bool:
    position = args.find("--to-destination ")
    if position < 0:
        return False
    destination = args[position + len("--to-destination "):].split(" ", 1)[0]
    # "IP:PORT" or "[IPv6]:PORT" (a bare IPv6 address has colons but no brackets).
    has_port = "]:" in destination or (destination.count(":") == 1)
    return has_port and not any(proto in f" {args}" for proto in _DNAT_PROTOCOLS)


class FakeIptables:
    """Per family and table, the chains and rules a kernel would hold."""

    def __init__(self, families: Iterable[IPFamily] = tuple(IPFamily), *,
                 complete_targets: bool = False) -> None:
        self._families = tuple(families)
        self.complete_targets = complete_targets
        self._tables: dict[tuple[IPFamily, Table], _Table] = {}
        self.history: list[TransactionRecord] = []
        self.transactions = 0  # committed table transactions (restores and jump changes)
        self.rejected = 0
        self.last_transaction_lines = 0

    @property
    def families(self) -> tuple[IPFamily, ...]:
        return self._families

    def apply_restore(self, family: IPFamily, text: str, noflush: bool = True) -> None:
        """Apply a restore payload (one or several tables); raises :class:`RestoreError`.

        Like ``iptables-restore``, tables are committed one by one as their ``COMMIT`` is
        reached, and processing stops at the first failing table (earlier ones stay).
        """
        self._require_family(family)
        try:
            for transaction in iter_restore(text):
                self._apply_transaction(family, transaction, noflush)
        except RestoreSyntaxError as exc:
            self.rejected += 1
            self.history.append(TransactionRecord(family, "", 0, False, str(exc)))
            raise RestoreError(f"syntax error: {exc.reason}", stderr=str(exc),
                               line_number=exc.line_number, line=exc.line) from exc

    def _apply_transaction(self, family: IPFamily, transaction: RestoreTransaction,
                           noflush: bool) -> None:
        kind = _TABLES.get(transaction.table)
        try:
            if kind is None:
                raise _Rejected(None, f"unknown table {transaction.table!r}")
            base = self._table(family, kind)
            if not noflush:
                base = _Table.empty(kind)
            work = _Transaction(kind, base, self.complete_targets)
            for command in transaction.commands:
                work.apply(command)
        except _Rejected as rejected:
            self.rejected += 1
            self.history.append(TransactionRecord(
                family, transaction.table, transaction.written_lines, False, rejected.reason))
            failing = rejected.command
            line_number = failing.line_number if failing else transaction.line_number
            raise RestoreError(rejected.reason, stderr=rejected.reason,
                               line_number=line_number,
                               line=_describe(failing, transaction.table)) from None
        work.commit()
        self._tables[(family, kind)] = base
        self.transactions += 1
        self.last_transaction_lines = transaction.written_lines
        self.history.append(
            TransactionRecord(family, transaction.table, transaction.written_lines, True))

    # builtin chain jumps (what the backends do with iptables -C / -I / -D)

    def ensure_jump(self, family: IPFamily, jump: BuiltinJump) -> bool:
        """Insert ``jump`` unless an identical rule is there; True when it was inserted."""
        if jump.args in self.rules(family, jump.table, jump.chain):
            return False
        verb = f"-I {jump.chain} 1" if jump.first else f"-A {jump.chain}"
        self.apply_restore(family, f"*{jump.table.value}\n{verb} {jump.args}\nCOMMIT\n")
        return True

    def delete_jump(self, family: IPFamily, jump: BuiltinJump) -> int:
        """Delete every copy of ``jump``; returns how many there were."""
        count = self.rules(family, jump.table, jump.chain).count(jump.args)
        if count:
            lines = "".join(f"-D {jump.chain} {jump.args}\n" for _ in range(count))
            self.apply_restore(family, f"*{jump.table.value}\n{lines}COMMIT\n")
        return count

    # reading

    def chain_names(self, family: IPFamily, table: Table) -> list[str]:
        state = self._tables.get((family, table))
        return list(state.chains) if state is not None else list(BUILTIN_CHAINS[table])

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        state = self._tables.get((family, table))
        if state is None:
            return chain in BUILTIN_CHAINS[table]
        return chain in state.chains

    def rules(self, family: IPFamily, table: Table, chain: str) -> tuple[str, ...]:
        """The rules of ``chain`` (empty when it does not exist)."""
        state = self._tables.get((family, table))
        found = state.chains.get(chain) if state is not None else None
        return tuple(found.rules) if found is not None else ()

    def kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        return {name for name in self.chain_names(family, table)
                if name.startswith(CHAIN_PREFIX)}

    def references(self, family: IPFamily, table: Table, chain: str) -> int:
        """How many rules jump to ``chain`` (what blocks ``-X``)."""
        state = self._tables.get((family, table))
        return state.references[chain] if state is not None else 0

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        """``iptables-save`` text: every table used so far, or ``table`` (empty if unused)."""
        self._require_family(family)
        if table is not None:
            kinds = [table]
        else:
            kinds = [kind for kind in Table if (family, kind) in self._tables]
        blocks = [_save_table(kind, self._tables.get((family, kind)) or _Table.empty(kind))
                  for kind in kinds]
        return "".join(blocks)

    def _table(self, family: IPFamily, kind: Table) -> _Table:
        state = self._tables.get((family, kind))
        if state is None:
            state = self._tables[(family, kind)] = _Table.empty(kind)
        return state

    def _require_family(self, family: IPFamily) -> None:
        if family not in self._families:
            raise RestoreError(f"{family} iptables is not available")


def _describe(command: RestoreCommand | None, table: str) -> str:
    if command is None:
        return f"*{table}"
    if command.op is Op.DECLARE:
        return f":{command.chain} {command.policy} [0:0]"
    position = f" {command.position}" if command.position else ""
    args = f" {command.args}" if command.args else ""
    return f"{command.op.value} {command.chain}{position}{args}"


def _save_table(kind: Table, state: _Table) -> str:
    builtins = BUILTIN_CHAINS[kind]
    order = list(builtins) + sorted(name for name in state.chains if name not in builtins)
    lines = [f"*{kind.value}"]
    for name in order:
        policy = state.chains[name].policy
        lines.append(f":{name} {policy or '-'} [0:0]")
    for name in order:
        head = f"-A {name} "
        lines += [head + rule for rule in state.chains[name].rules]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


class FakeBackend:
    """The backend interface on a :class:`FakeIptables`, for proxier tests.

    ``fail_restores`` makes that many next restores fail (without changing anything), to
    exercise the proxier's fall-back to a full sync; ``fail_families`` makes every restore
    of those families fail. ``payloads`` keeps what each restore was given, in order.
    """

    def __init__(self, iptables: FakeIptables | None = None, *, name: str = "fake",
                 chunking: ChunkPolicy | None = None) -> None:
        self.iptables = iptables if iptables is not None else FakeIptables()
        self._name = name
        self._chunking = chunking
        self.fail_restores = 0
        self.fail_families: set[IPFamily] = set()
        self.payloads: list[tuple[IPFamily, dict[Table, str]]] = []
        self.reads = 0

    @property
    def chunking(self) -> ChunkPolicy | None:
        return self._chunking

    @property
    def name(self) -> str:
        return self._name

    def families(self) -> tuple[IPFamily, ...]:
        return self.iptables.families

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        self.restore_all(family, {table: text})

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        text = join_payloads(payloads)
        if not text:
            return
        self.payloads.append((family, {table: table_text(part)
                                       for table, part in payloads.items()}))
        if family in self.fail_families:
            raise RestoreError(f"injected {family} failure", stderr="injected failure")
        if self.fail_restores > 0:
            self.fail_restores -= 1
            raise RestoreError("injected failure", stderr="injected failure")
        self.iptables.apply_restore(family, text)

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        return self.iptables.save(family, table)

    def ensure_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        return sum(self.iptables.ensure_jump(family, jump) for jump in jumps)

    def remove_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        return sum(self.iptables.delete_jump(family, jump) for jump in jumps)

    def read_tables(self, family: IPFamily) -> dict[Table, KernelTable]:
        if family in self.fail_families:
            raise BackendError(f"injected {family} failure")
        self.reads += 1
        return {
            table: KernelTable(
                frozenset(self.iptables.kproxy_chains(family, table)),
                {chain: self.iptables.rules(family, table, chain)
                 for chain in BUILTIN_CHAINS[table]},
            )
            for table in Table
        }

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        return self.iptables.kproxy_chains(family, table)

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        if family not in self.iptables.families:
            raise BackendError(f"{family} iptables is not available")
        return self.iptables.chain_exists(family, table, chain)
