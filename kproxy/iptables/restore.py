"""The ``iptables-restore`` / ``iptables-save`` text format: render rulesets, parse text back.

Rendering is the hot path of every sync (10,000 services are ~110k chains and ~350k rules
per family), so it only joins strings the planner already built: rule arguments are kept in
``iptables-save`` form and are never re-quoted or re-formatted here.

Every payload is meant for ``iptables-restore --noflush``: declaring a chain (``:NAME - [0:0]``)
creates it or flushes it, ``-A`` appends, ``-X`` deletes an (empty, unreferenced) chain, and
each table's block up to ``COMMIT`` is applied atomically by the kernel. Chains that are not
mentioned are left alone, which is what lets kproxy run beside other users of the same tables.

Parsing serves the in-memory fake (which validates payloads like the kernel), the libiptc
backend (which applies payloads itself), cleanup and tests.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from kproxy.iptables.ruleset import (
    CHAIN_PREFIX,
    BuiltinJump,
    Chain,
    Ruleset,
    RulesetDelta,
    Table,
)

COMMIT = "COMMIT"
# A table's payload is one text, or its consecutive pieces: a full sync at 10,000 services
# renders ~35 MB per family, and joining that into one string would hold it twice. Pieces
# of this many lines (about a megabyte) are joined as the lines are made.
TableText = str | Sequence[str]
PIECE_LINES = 4096
_TABLES = {table.value: table for table in Table}
# What a declaration looks like for a chain without policy; counters are ignored by the kernel.
_NO_POLICY = "-"


# --- rendering -----------------------------------------------------------------------------


def render_full(ruleset: Ruleset) -> dict[Table, str]:
    """One payload per table declaring every kproxy chain and appending all of its rules.

    Declaring a chain flushes it, so the payload replaces the content of every chain it
    names. Chains of the kernel that the ruleset no longer has are not touched: use
    :func:`render_full_replacing` to remove those as well.
    """
    return render_full_replacing(ruleset, {})


def render_full_replacing(
    ruleset: Ruleset, existing_kproxy_chains: Mapping[Table, Iterable[str]],
    jumps: Iterable[BuiltinJump] = (),
) -> dict[Table, str]:
    """:func:`render_full_pieces`, each table's pieces joined into one text."""
    return {table: "".join(pieces) for table, pieces in
            render_full_pieces(ruleset, existing_kproxy_chains, jumps).items()}


def render_full_pieces(
    ruleset: Ruleset, existing_kproxy_chains: Mapping[Table, Iterable[str]],
    jumps: Iterable[BuiltinJump] = (),
) -> dict[Table, tuple[str, ...]]:
    """Like :func:`render_full`, and also flush and delete stale kproxy chains.

    ``existing_kproxy_chains`` are the kproxy chains the kernel has now (per table); those
    absent from the ruleset (a deleted service's chains) are declared, so that they are
    flushed in the same transaction, and deleted after every rule has been written, so that
    nothing still jumps to them. Names without :data:`CHAIN_PREFIX` are never deleted.

    ``jumps`` (the builtin-chain jumps the kernel lacks) are added in the same transaction,
    after every kproxy chain is complete: ``first`` ones inserted at the top, in order.
    """
    payloads: dict[Table, tuple[str, ...]] = {}
    tables = list(ruleset.tables)
    tables += [table for table in existing_kproxy_chains if table not in ruleset.tables]
    jump_lines = jumps_by_table(jumps)
    tables += [table for table in jump_lines if table not in tables]
    for table in tables:
        rules = ruleset.tables.get(table)
        chains = tuple(rules.chains.values()) if rules is not None else ()
        stale = stale_chains(ruleset, table, existing_kproxy_chains.get(table, ()))
        extra = jump_lines.get(table, [])
        if chains or stale or extra:
            payloads[table] = _table_pieces(table, chains, stale, extra)
    return payloads


def stale_chains(ruleset: Ruleset, table: Table, existing: Iterable[str]) -> list[str]:
    """The kproxy chains of ``existing`` that ``ruleset`` no longer has, sorted."""
    rules = ruleset.tables.get(table)
    wanted = rules.chains if rules is not None else {}
    return sorted(name for name in existing
                  if name.startswith(CHAIN_PREFIX) and name not in wanted)


def jump_line(jump: BuiltinJump) -> str:
    """The restore line adding ``jump`` to its builtin chain."""
    where = f"-I {jump.chain} 1" if jump.first else f"-A {jump.chain}"
    return f"{where} {jump.args}"


def jumps_by_table(jumps: Iterable[BuiltinJump]) -> dict[Table, list[str]]:
    lines: dict[Table, list[str]] = {}
    for jump in jumps:
        lines.setdefault(jump.table, []).append(jump_line(jump))
    return lines


def render_delta(delta: RulesetDelta) -> dict[Table, str]:
    """One payload per table rewriting the chains ``delta`` writes and deleting the others.

    Written chains are declared (flushed) and refilled; deleted chains are declared too (so
    their rules, which may jump to other deleted chains, go first) and removed with ``-X``
    after every ``-A`` line, by which time the rewritten chains no longer jump to them.
    """
    payloads: dict[Table, str] = {}
    tables = list(delta.write)
    tables += [table for table in delta.delete if table not in delta.write]
    for table in tables:
        chains = delta.write.get(table, ())
        deleted = delta.delete.get(table, frozenset())
        clash = deleted.intersection(chain.name for chain in chains)
        if clash:
            raise ValueError(f"chains both written and deleted in {table}: {sorted(clash)}")
        not_ours = [name for name in deleted if not name.startswith(CHAIN_PREFIX)]
        if not_ours:
            raise ValueError(f"refusing to delete chains kproxy does not own: {sorted(not_ours)}")
        if chains or deleted:
            payloads[table] = _render_table(table, chains, sorted(deleted))
    return payloads


def rule_blocks(chains: Iterable[Chain]) -> list[str]:
    """Per chain, its ``-A`` lines as one string (one join per chain, none per rule)."""
    return list(_rule_blocks(chains))


def _rule_blocks(chains: Iterable[Chain]) -> Iterator[str]:
    for chain in chains:
        if chain.rules:
            # "-A NAME " is the separator between rules.
            head = f"-A {chain.name} "
            yield head + ("\n" + head).join(chain.rules)


def table_text(text: TableText) -> str:
    """A table's payload as one text."""
    return text if isinstance(text, str) else "".join(text)


def table_pieces(text: TableText) -> Sequence[str]:
    """A table's payload as consecutive pieces (one, when it is one text)."""
    return (text,) if isinstance(text, str) else text


def join_payloads(payloads: Mapping[Table, TableText]) -> str:
    """Several table payloads as one ``iptables-restore`` input (each table commits on its own)."""
    return "".join(piece for text in payloads.values() for piece in table_pieces(text))


def _render_table(table: Table, chains: Iterable[Chain], deleted: list[str]) -> str:
    return "".join(_table_pieces(table, tuple(chains), deleted, ()))


def _table_pieces(table: Table, chains: tuple[Chain, ...], deleted: list[str],
                  extra: Iterable[str]) -> tuple[str, ...]:
    lines = itertools.chain(
        (f"*{table.value}",),
        (f":{chain.name} - [0:0]" for chain in chains),
        (f":{name} - [0:0]" for name in deleted),
        _rule_blocks(chains),
        extra,
        (f"-X {name}" for name in deleted),
        (COMMIT,),
    )
    # Each piece is made from lines that are dropped right after: the text exists once.
    batches = iter(lambda: list(itertools.islice(lines, PIECE_LINES)), [])
    return tuple("\n".join(batch) + "\n" for batch in batches)


# --- iptables-save output ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedChain:
    """One chain as ``iptables-save`` shows it; ``policy`` is None for user-defined chains."""

    name: str
    policy: str | None
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ParsedTable:
    """One table of ``iptables-save`` output; chains in the order they were listed."""

    table: Table
    chains: Mapping[str, ParsedChain]

    def user_chains(self) -> list[str]:
        return [name for name, chain in self.chains.items() if chain.policy is None]

    def kproxy_chains(self) -> set[str]:
        return {name for name in self.chains if name.startswith(CHAIN_PREFIX)}


class SaveFormatError(ValueError):
    """Text that is not ``iptables-save`` output."""


def parse_save(text: str) -> dict[Table, ParsedTable]:
    """Parse ``iptables-save`` output (with or without ``-c`` counters), per table.

    Tables kproxy does not manage (raw, security) are skipped. Comment lines are ignored.
    """
    tables: dict[Table, ParsedTable] = {}
    table_name: str | None = None
    policies: dict[str, str | None] = {}
    rules: dict[str, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_counters(raw.strip())
        if not line or line[0] == "#":
            continue
        if table_name is None:
            if line[0] != "*":
                raise SaveFormatError(f"line {number}: expected '*table', got {raw!r}")
            table_name = line[1:]
            policies, rules = {}, {}
        elif line[0] == ":":
            name, policy = _parse_declaration(line, number)
            policies[name] = policy
            rules.setdefault(name, [])
        elif line.startswith("-A "):
            chain, _, args = line[3:].partition(" ")
            if chain not in rules:
                raise SaveFormatError(f"line {number}: rule for undeclared chain {chain!r}")
            rules[chain].append(args)
        elif line == COMMIT:
            table = _TABLES.get(table_name)
            if table is not None:
                chains = {
                    name: ParsedChain(name, policy, tuple(rules[name]))
                    for name, policy in policies.items()
                }
                tables[table] = ParsedTable(table, chains)
            table_name = None
        else:
            raise SaveFormatError(f"line {number}: unexpected {raw!r}")
    if table_name is not None:
        raise SaveFormatError(f"table {table_name!r} has no COMMIT")
    return tables


def _strip_counters(line: str) -> str:
    # "[12:3456] -A CHAIN ..." as printed by iptables-save -c, or given to restore --counters.
    if line.startswith("["):
        closing = line.find("] ")
        if closing > 0:
            return line[closing + 2:]
    return line


def _parse_declaration(line: str, number: int) -> tuple[str, str | None]:
    fields = line[1:].split()
    if len(fields) not in (2, 3) or not fields[0]:
        raise SaveFormatError(f"line {number}: bad chain declaration {line!r}")
    policy = fields[1]
    return fields[0], (None if policy == _NO_POLICY else policy)


# --- iptables-restore input ----------------------------------------------------------------


class Op(enum.Enum):
    DECLARE = "declare"  # ":NAME POLICY [p:b]": create, or flush (and set a builtin's policy)
    APPEND = "-A"
    INSERT = "-I"
    DELETE_RULE = "-D"
    NEW_CHAIN = "-N"
    FLUSH = "-F"
    DELETE_CHAIN = "-X"


@dataclass(frozen=True, slots=True)
class RestoreCommand:
    """One line of a restore payload.

    ``args`` are a rule's arguments (APPEND, INSERT, DELETE_RULE), ``policy`` a declaration's
    policy (``"-"`` for user chains), ``position`` the 1-based rule number of INSERT (0: top)
    or DELETE_RULE (0: by specification).
    """

    op: Op
    chain: str
    line_number: int
    args: str = ""
    policy: str = _NO_POLICY
    position: int = 0


@dataclass(frozen=True, slots=True)
class RestoreTransaction:
    """One ``*table ... COMMIT`` block: the kernel applies it all or nothing."""

    table: str
    line_number: int
    commit_line_number: int
    commands: tuple[RestoreCommand, ...]

    @property
    def written_lines(self) -> int:
        return len(self.commands)


class RestoreSyntaxError(ValueError):
    """A payload ``iptables-restore`` would refuse to parse."""

    def __init__(self, line_number: int, line: str, reason: str) -> None:
        super().__init__(f"line {line_number}: {reason}: {line!r}")
        self.line_number = line_number
        self.line = line
        self.reason = reason


_RULE_OPS = {"-A": Op.APPEND, "-I": Op.INSERT, "-D": Op.DELETE_RULE}
_CHAIN_OPS = {"-N": Op.NEW_CHAIN, "-F": Op.FLUSH, "-X": Op.DELETE_CHAIN}


def parse_restore(text: str) -> list[RestoreTransaction]:
    """Split a restore payload into its table transactions, one command per line."""
    return list(iter_restore(text))


def iter_restore(text: str) -> Iterator[RestoreTransaction]:
    """Each table transaction as soon as its COMMIT is read, as ``iptables-restore`` does.

    A syntax error is raised when reached, after the complete transactions before it (which
    the real tool has committed by then) have been yielded.
    """
    table: str | None = None
    start = 0
    commands: list[RestoreCommand] = []
    number = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_counters(raw.strip())
        if not line or line[0] == "#":
            continue
        if table is None:
            if line[0] != "*" or len(line) == 1:
                raise RestoreSyntaxError(number, raw, "expected '*table'")
            table, start, commands = line[1:], number, []
        elif line == COMMIT:
            yield RestoreTransaction(table, start, number, tuple(commands))
            table = None
        elif line[0] == ":":
            fields = line[1:].split()
            if len(fields) not in (2, 3) or not fields[0]:
                raise RestoreSyntaxError(number, raw, "bad chain declaration")
            commands.append(RestoreCommand(Op.DECLARE, fields[0], number, policy=fields[1]))
        else:
            commands.append(_parse_command(line, number, raw))
    if table is not None:
        raise RestoreSyntaxError(number + 1, "", f"COMMIT expected for table {table!r}")


def _parse_command(line: str, number: int, raw: str) -> RestoreCommand:
    flag, _, rest = line.partition(" ")
    chain, _, args = rest.partition(" ")
    if not chain:
        raise RestoreSyntaxError(number, raw, f"{flag} needs a chain")
    rule_op = _RULE_OPS.get(flag)
    if rule_op is not None:
        position = 0
        if rule_op is not Op.APPEND:
            first, _, after = args.partition(" ")
            if first.isdigit():
                position, args = int(first), after
        return RestoreCommand(rule_op, chain, number, args=args, position=position)
    chain_op = _CHAIN_OPS.get(flag)
    if chain_op is not None and not args:
        return RestoreCommand(chain_op, chain, number)
    raise RestoreSyntaxError(number, raw, "unsupported command")


# --- rule arguments ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArgToken:
    """One argument of a rule; ``quoted`` when any part of it was in double quotes."""

    text: str
    quoted: bool = False


def split_args(args: str) -> list[str]:
    """Rule arguments as the argv ``iptables`` itself would get (quotes removed)."""
    return [token.text for token in tokenize_args(args)]


def tokenize_args(args: str) -> list[ArgToken]:
    """Split rule arguments the way ``iptables-restore`` does.

    Whitespace separates arguments; double quotes group (and may appear mid-argument);
    inside quotes a backslash takes the next character literally, as ``iptables-save``
    escapes ``"``, ``\\`` and ``'`` in comments.
    """
    tokens: list[ArgToken] = []
    current: list[str] = []
    in_quotes = escaped = quoted = False
    for char in args:
        if in_quotes:
            if escaped:
                current.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
            else:
                current.append(char)
        elif char == '"':
            in_quotes = quoted = True
        elif char in " \t":
            if current or quoted:
                tokens.append(ArgToken("".join(current), quoted))
            current, quoted = [], False
        else:
            current.append(char)
    if in_quotes:
        raise ValueError(f"unterminated quote in rule arguments: {args!r}")
    if current or quoted:
        tokens.append(ArgToken("".join(current), quoted))
    return tokens


def jump_target(args: str) -> str | None:
    """The chain or target a rule jumps to (``-j X`` or ``-g X``), None without one.

    Called for every rule the fake sees, so it avoids tokenizing unless a quote could hide
    a ``-j`` inside a comment.
    """
    position = max(args.rfind(" -j "), args.rfind(" -g "))
    if position >= 0:
        position += 1
    elif args.startswith(("-j ", "-g ")):
        position = 0
    else:
        position = -1
    if '"' in args and (position < 0 or "\\" in args or args.count('"', 0, position) % 2):
        return _jump_target_slow(args)
    if position < 0:
        return None
    end = args.find(" ", position + 3)
    return args[position + 3:] if end < 0 else args[position + 3:end]


def _jump_target_slow(args: str) -> str | None:
    tokens = tokenize_args(args)
    for index, token in enumerate(tokens[:-1]):
        if not token.quoted and token.text in ("-j", "-g", "--jump", "--goto"):
            return tokens[index + 1].text
    return None
