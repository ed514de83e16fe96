"""The backend that programs iptables in-process through python-iptables (libiptc).

libiptc talks to the legacy (x_tables) kernel interface only. A payload is parsed back into
commands (:func:`kproxy.iptables.restore.iter_restore`) and each table's commands are applied
to one libiptc handle and committed together: one atomic table replacement per table, the
same thing ``iptables-legacy-restore`` does. Each rule's argument string (iptables-save form)
is turned into a python-iptables rule by :class:`RuleBuilder`. IPv6 is served by a child
process (:mod:`kproxy.iptables.libiptc_child`): python-iptables cannot use the NAT targets
of both families in one process.

Needs ``pip install python-iptables`` and the Debian packages libip4tc2, libip6tc2 and
libxtables12 (pulled in by iptables). ``XTABLES_LIBDIR`` (where the ``libxt_*.so`` extensions
live) is set to the usual multiarch directory when unset, which saves python-iptables an
``ldconfig`` run at import.

Like the iptables tools, every read-modify-commit holds the xtables lock (``/run/xtables.lock``
or ``$XTABLES_LOCKFILE``), waiting up to 5 s for it, so it does not race iptables commands.
Compiling rules is the slow part (python-iptables, ~0.2 ms a rule), so a payload's rules are
compiled before the lock is taken; the lock covers reading the table, applying, committing.
The price is memory during a full sync: the compiled entries (~500 bytes a rule) on top of
libiptc's own copies of the table.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kproxy.iptables.backend import (
    BackendError,
    CommandError,
    CommandRunner,
    RestoreError,
    run_command,
)
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.kernelstate import KernelTable, scan_save
from kproxy.iptables.restore import (
    ArgToken,
    Op,
    RestoreCommand,
    RestoreSyntaxError,
    RestoreTransaction,
    TableText,
    iter_restore,
    join_payloads,
    table_text,
    tokenize_args,
)
from kproxy.iptables.ruleset import CHAIN_PREFIX, MAX_CHAIN_NAME, BuiltinJump, Table
from kproxy.model.types import IPFamily

log = logging.getLogger(__name__)

XTABLES_LIBDIRS = (
    "/usr/lib/x86_64-linux-gnu/xtables",
    "/usr/lib/aarch64-linux-gnu/xtables",
    "/usr/lib64/xtables",
    "/usr/lib/xtables",
)
DEFAULT_LOCK_PATH = "/run/xtables.lock"
LOCK_WAIT_SECONDS = 5.0
LOCK_POLL_SECONDS = 0.1
STANDARD_VERDICTS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})

# Rule arguments that set the IP header part of a rule, and the python-iptables attribute.
_HEADER_OPTIONS = {
    "-s": "src", "--source": "src",
    "-d": "dst", "--destination": "dst",
    "-i": "in_interface", "--in-interface": "in_interface",
    "-o": "out_interface", "--out-interface": "out_interface",
    "-p": "protocol", "--protocol": "protocol",
}
_MATCH_OPTIONS = ("-m", "--match")
_JUMP_OPTIONS = ("-j", "--jump")
_GOTO_OPTIONS = ("-g", "--goto")


class LibiptcUnavailable(BackendError):
    """python-iptables or the legacy iptables kernel interface cannot be used here."""


def load_iptc() -> Any:
    """Import python-iptables (module ``iptc``); :class:`LibiptcUnavailable` says why not."""
    if "XTABLES_LIBDIR" not in os.environ:
        found = next((path for path in XTABLES_LIBDIRS if os.path.isdir(path)), None)
        if found is not None:
            os.environ["XTABLES_LIBDIR"] = found
    try:
        return importlib.import_module("iptc")
    except ImportError as exc:
        raise LibiptcUnavailable(
            f"python-iptables is not installed (pip install python-iptables): {exc}") from exc
    except Exception as exc:
        # Missing libxtables/libip4tc surface as AttributeError/OSError/XTablesError.
        raise LibiptcUnavailable(
            f"python-iptables cannot load libxtables/libiptc ({type(exc).__name__}: {exc}); "
            "install the iptables package, or set XTABLES_LIBDIR and IPTABLES_LIBDIR") from exc


class RuleSyntaxError(ValueError):
    """Rule arguments the libiptc backend cannot translate."""


class RuleBuilder:
    """Turns iptables-save rule arguments into python-iptables rules, for one family.

    Understands the header options (``-s -d -i -o -p``, each with ``!``), any ``-m MATCH``
    with its ``--options`` (e.g. comment, tcp/udp/sctp, multiport, addrtype, mark, conntrack,
    statistic, recent), and ``-j``/``-g`` to a verdict, a chain or a target extension with its
    options (DNAT, MARK, MASQUERADE, REJECT, ...). Option values are handed to the extension's
    own parser, so anything iptables accepts for these extensions is accepted here.
    """

    def __init__(self, iptc: Any, family: IPFamily) -> None:
        base = iptc.Rule6 if family is IPFamily.IPV6 else iptc.Rule
        # python-iptables decides whether a target names a chain by opening every table
        # (which creates raw and security in the kernel); this backend decides itself.
        self._rule_class: Callable[[], Any] = type(
            "KproxyRule", (base,), {"tables": property(lambda _self: [])})

    def build(self, args: str, is_chain: Callable[[str], bool]) -> Any:
        rule = self._rule_class()
        tokens = tokenize_args(args)
        module: Any = None
        negate = False
        index = 0
        while index < len(tokens):
            text = tokens[index].text
            if tokens[index].quoted:
                raise RuleSyntaxError(f"unexpected quoted argument {text!r} in {args!r}")
            if text == "!":
                negate = True
                index += 1
                continue
            if text.startswith("--") and text not in _HEADER_OPTIONS and (
                    text not in _MATCH_OPTIONS + _JUMP_OPTIONS + _GOTO_OPTIONS):
                if module is None:
                    raise RuleSyntaxError(f"option {text} outside a match or target in {args!r}")
                index = self._module_option(module, tokens, index, negate)
                negate = False
                continue
            if index + 1 >= len(tokens):
                raise RuleSyntaxError(f"{text} needs a value in {args!r}")
            value = tokens[index + 1].text
            index += 2
            attribute = _HEADER_OPTIONS.get(text)
            if attribute is not None:
                setattr(rule, attribute, f"!{value}" if negate else value)
            elif negate:
                raise RuleSyntaxError(f"'!' before {text} in {args!r}")
            elif text in _MATCH_OPTIONS:
                module = rule.create_match(value)
            elif text in _JUMP_OPTIONS or text in _GOTO_OPTIONS:
                module = self._target(rule, value, text in _GOTO_OPTIONS, is_chain)
            else:
                raise RuleSyntaxError(f"unsupported argument {text!r} in {args!r}")
            negate = False
        # The extensions' own final checks (python-iptables' public final_check also re-reads
        # every parameter through the extension's save function, which triples the cost).
        for match in rule.matches:
            match._final_check()
        if rule.target is not None:
            rule.target._final_check()
        else:
            # No -j (e.g. the comment-only rule that ends a firewall chain): the standard
            # target with an empty name, which libiptc stores as "fall through", as iptables.
            rule.create_target("ACCEPT").standard_target = ""
        return rule

    @staticmethod
    def _module_option(module: Any, tokens: list[ArgToken], index: int, negate: bool) -> int:
        option = tokens[index].text[2:]
        index += 1
        values: list[str] = []
        # Values run up to the next option ("!" or "-x"); a quoted value is always a value.
        while index < len(tokens) and (tokens[index].quoted or not (
                tokens[index].text == "!" or tokens[index].text.startswith("-"))):
            values.append(tokens[index].text)
            index += 1
        # python-iptables wants one value as a string, several as a list, none as "".
        value: str | list[str] = values[0] if len(values) == 1 else (values or "")
        if negate:
            value = f"!{value}" if isinstance(value, str) else ["!", *value]
        module.parse(option, value)
        return index

    @staticmethod
    def _target(rule: Any, name: str, goto: bool, is_chain: Callable[[str], bool]) -> Any:
        if name in STANDARD_VERDICTS or is_chain(name):
            # A verdict or a jump: the standard target, named after the verdict or chain
            # (libiptc resolves the name when the rule is added).
            target = rule.create_target("ACCEPT", goto=goto)
            target.standard_target = name
            return None
        return rule.create_target(name, goto=goto)


@dataclass(slots=True)
class _Prepared:
    """A command with its rule already compiled (libiptc entry bytes, and mask for deletes)."""

    command: RestoreCommand
    entry: bytes | None = None
    mask: bytes | None = None


class LibiptcBackend:
    """The backend interface on python-iptables; see the module docstring."""

    def __init__(self, *, runner: CommandRunner = run_command,
                 lock_path: str | None = None, only: IPFamily | None = None) -> None:
        """``only``: serve that family in this process and no other (the IPv6 child's way);
        by default IPv4 is served here and IPv6 by a child process (:mod:`libiptc_child`)."""
        self._only = only
        self._child: _FamilyChild | None = None
        self._child_lock = threading.Lock()
        self._iptc = load_iptc()
        self._run = runner
        self._lock_path = lock_path or os.environ.get("XTABLES_LOCKFILE", DEFAULT_LOCK_PATH)
        # python-iptables keeps global parser state: one caller at a time.
        self._mutex = threading.Lock()
        self._builders = {family: RuleBuilder(self._iptc, family) for family in IPFamily}
        self._extension_dirs = [
            path for path in os.environ.get("XTABLES_LIBDIR", "").split(":") if path]
        self._extensions: dict[tuple[IPFamily, str], bool] = {}
        self._families: tuple[IPFamily, ...] | None = None
        if not self.families():
            raise LibiptcUnavailable(
                "libiptc cannot open the nat table for any family "
                "(no legacy iptables support in this kernel?)")

    def __repr__(self) -> str:
        return "LibiptcBackend()"

    @property
    def name(self) -> str:
        return "libiptc"

    @property
    def chunking(self) -> ChunkPolicy | None:
        return None  # one commit replaces a whole table blob: splitting only costs more

    def families(self) -> tuple[IPFamily, ...]:
        """The families whose nat table libiptc can open: IPv4 here, IPv6 in a child.

        python-iptables cannot serve both families in one process: libxtables registers an
        extension only for the family active when its library is first loaded, so after the
        IPv4 NAT targets are in use, IPv6 cannot find DNAT/MASQUERADE (and re-running the
        extension's init makes libxtables exit the process). IPv6 calls therefore go to a
        process of their own, started on first use.
        """
        if self._families is None:
            if self._only is not None:
                self._families = (self._only,) if self._opens_nat(self._only) else ()
                return self._families
            found = [IPFamily.IPV4] if self._opens_nat(IPFamily.IPV4) else []
            # The child starts on the first IPv6 call; whether the kernel has legacy IPv6
            # NAT at all, the legacy tool tells cheaply (the same kernel interface).
            if self._run(["ip6tables-legacy", "-w", "5", "-t", "nat", "-S", "POSTROUTING"]).ok:
                found.append(IPFamily.IPV6)
            self._families = tuple(found)
        return self._families

    def _opens_nat(self, family: IPFamily) -> bool:
        try:
            self._table(family, Table.NAT)
        except Exception:
            return False
        return True

    def _ipv6_child(self, family: IPFamily) -> _FamilyChild | None:
        """The child serving ``family``, or None when this process serves it."""
        if family is not IPFamily.IPV6 or self._only is not None:
            return None
        with self._child_lock:
            if self._child is None:
                if family not in self.families():
                    raise BackendError("the libiptc backend cannot program IPv6 here")
                self._child = _FamilyChild.start()
            return self._child

    # writing

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        self.restore_all(family, {table: text})

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        child = self._ipv6_child(family)
        if child is not None:
            child.call("restore_all", {table.value: table_text(text)
                                       for table, text in payloads.items()})
            return
        text = join_payloads(payloads)
        with self._mutex, _young_garbage_only():
            try:
                for transaction in iter_restore(text):
                    self._apply(family, transaction)
            except RestoreSyntaxError as exc:
                raise RestoreError(f"syntax error: {exc.reason}", stderr=str(exc),
                                   line_number=exc.line_number, line=exc.line) from exc

    def _apply(self, family: IPFamily, transaction: RestoreTransaction) -> None:
        try:
            kind = Table(transaction.table)
        except ValueError:
            raise RestoreError(f"unknown table {transaction.table!r}",
                               line_number=transaction.line_number,
                               line=f"*{transaction.table}") from None
        # Compiling rules is the slow part (python-iptables): done before taking the xtables
        # lock, so that other iptables users wait only for the table swap itself.
        prepared = self._prepare(family, transaction)
        with self._locked_table(family, kind) as table:
            step: _Prepared | None = None
            try:
                for step in prepared:
                    _apply_command(table, step)
            except Exception as exc:
                failing = step.command if step is not None else None
                number = failing.line_number if failing else transaction.line_number
                raise RestoreError(f"libiptc: {exc}", stderr=str(exc), line_number=number,
                                   line=_describe(failing)) from exc
            try:
                table.commit()
            except Exception as exc:
                raise RestoreError(f"libiptc commit of {kind} failed: {exc}", stderr=str(exc),
                                   line_number=transaction.commit_line_number,
                                   line="COMMIT") from exc

    def _prepare(self, family: IPFamily, transaction: RestoreTransaction) -> list[_Prepared]:
        builder = self._builders[family]
        declared = {command.chain for command in transaction.commands
                    if command.op in (Op.DECLARE, Op.NEW_CHAIN)}

        def is_chain(name: str) -> bool:
            return name in declared or not self._is_target_extension(family, name)

        prepared = []
        for command in transaction.commands:
            step = _Prepared(command)
            op = command.op
            if op in (Op.APPEND, Op.INSERT) or (op is Op.DELETE_RULE and not command.position):
                try:
                    rule = builder.build(command.args, is_chain)
                    # Plain bytes (~500 per rule): the compiled rule objects are far larger.
                    step.entry = bytes(rule.rule)
                    if command.op is Op.DELETE_RULE:
                        step.mask = bytes(rule.mask)
                except Exception as exc:
                    raise RestoreError(f"libiptc: {exc}", stderr=str(exc),
                                       line_number=command.line_number,
                                       line=_describe(command)) from exc
            prepared.append(step)
        return prepared

    def _is_target_extension(self, family: IPFamily, name: str) -> bool:
        """Whether ``-j name`` names a target extension (DNAT, MARK, ...) rather than a chain.

        kproxy's chain names never are; other names are looked up as extension libraries,
        the way libxtables finds them.
        """
        if name.startswith(CHAIN_PREFIX):
            return False
        key = (family, name)
        found = self._extensions.get(key)
        if found is None:
            family_prefix = "libip6t_" if family is IPFamily.IPV6 else "libipt_"
            found = any(os.path.exists(os.path.join(directory, f"{prefix}{name}.so"))
                        for directory in self._extension_dirs
                        for prefix in ("libxt_", family_prefix))
            self._extensions[key] = found
        return found

    def ensure_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        child = self._ipv6_child(family)
        if child is not None:
            return int(child.call("ensure_jumps", _jump_args(jumps)))
        inserted = 0
        with self._mutex:
            for jump in jumps:
                with self._locked_table(family, jump.table) as table:
                    rule = self._builders[family].build(jump.args, table.is_chain)
                    entry = rule.rule
                    # libiptc has no "check": a successful delete (never committed) is proof.
                    if _delete(table, jump.chain, entry, rule.mask):
                        continue
                    if jump.first:
                        table.insert_entry(jump.chain, entry, 0)
                    else:
                        table.append_entry(jump.chain, entry)
                    table.commit()
                    inserted += 1
        return inserted

    def remove_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        child = self._ipv6_child(family)
        if child is not None:
            return int(child.call("remove_jumps", _jump_args(jumps)))
        removed = 0
        with self._mutex:
            for jump in jumps:
                with self._locked_table(family, jump.table) as table:
                    try:
                        rule = self._builders[family].build(jump.args, table.is_chain)
                    except Exception:
                        if _names_missing_chain(jump, table):
                            continue  # nothing can jump to a chain that does not exist
                        raise
                    entry, mask = rule.rule, rule.mask
                    count = 0
                    while _delete(table, jump.chain, entry, mask):
                        count += 1
                    if count:
                        table.commit()
                    removed += count
        return removed

    # reading

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        program = "ip6tables-legacy-save" if family is IPFamily.IPV6 else "iptables-legacy-save"
        argv = [program] + (["-t", table.value] if table is not None else [])
        result = self._run(argv, timeout=None)
        if not result.ok:
            raise CommandError(result)
        return result.stdout

    def read_tables(self, family: IPFamily) -> dict[Table, KernelTable]:
        # The same kernel tables as iptables-legacy: one save shows them all.
        return scan_save(self.save(family))

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        child = self._ipv6_child(family)
        if child is not None:
            return set(child.call("list_kproxy_chains", table.value))
        with self._mutex, self._locked_table(family, table) as handle:
            return {chain.name for chain in handle.chains if chain.name.startswith(CHAIN_PREFIX)}

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        child = self._ipv6_child(family)
        if child is not None:
            return bool(child.call("chain_exists", [table.value, chain]))
        with self._mutex, self._locked_table(family, table) as handle:
            return bool(handle.is_chain(chain))

    # plumbing

    def _table(self, family: IPFamily, table: Table) -> Any:
        kind = self._iptc.Table6 if family is IPFamily.IPV6 else self._iptc.Table
        return kind(table.value, autocommit=False)

    @contextlib.contextmanager
    def _locked_table(self, family: IPFamily, table: Table) -> Iterator[Any]:
        """A fresh handle on ``table`` under the xtables lock, released (not committed) after.

        Errors come out as :class:`BackendError`.
        """
        with _xtables_lock(self._lock_path):
            handle = self._table(family, table)
            try:
                handle.refresh()
                yield handle
            except BackendError:
                raise
            except Exception as exc:
                # python-iptables raises IPTCError, XTablesError, ValueError, AttributeError.
                raise BackendError(f"libiptc ({family} {table}): {exc}") from exc
            finally:
                # Frees libiptc's copy of the table (the next transaction reads a new one);
                # with autocommit off, nothing uncommitted is written.
                handle.close()


def _apply_command(table: Any, step: _Prepared) -> None:
    command = step.command
    op, name = command.op, command.chain
    if op is Op.APPEND:
        table.append_entry(name, step.entry)
    elif op is Op.DECLARE:
        if table.builtin_chain(name):
            if command.policy != "-":
                table.set_policy(name, command.policy)
        elif command.policy != "-":
            raise RuleSyntaxError(f"cannot set a policy on user chain {name!r}")
        elif table.is_chain(name):
            table.flush_entries(name)
        else:
            table.create_chain(_checked_name(name))
    elif op is Op.INSERT:
        table.insert_entry(name, step.entry, max(command.position - 1, 0))
    elif op is Op.DELETE_RULE:
        if command.position:
            raise RuleSyntaxError("deleting by rule number is not supported")
        table.delete_entry(name, step.entry, step.mask)
    elif op is Op.NEW_CHAIN:
        table.create_chain(_checked_name(name))
    elif op is Op.FLUSH:
        table.flush_entries(name)
    elif op is Op.DELETE_CHAIN:
        table.delete_chain(name)
    else:  # pragma: no cover - every Op is handled above
        raise RuleSyntaxError(f"unsupported {op}")


@contextlib.contextmanager
def _young_garbage_only() -> Iterator[None]:
    """Keep the cyclic GC from rescanning everything that existed before a big transaction.

    python-iptables leaves a few reference cycles per rule: with the GC off they pile up
    (gigabytes at 300k rules); with it on, full collections over a growing heap made a large
    sync quadratic. Freezing the objects of before keeps collections small and linear.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _checked_name(name: str) -> str:
    # libiptc takes up to 31 characters; the iptables tools (and so every other user of the
    # table) only 28: keep to what they can handle.
    if len(name) > MAX_CHAIN_NAME:
        raise RuleSyntaxError(f"chain name {name!r} over {MAX_CHAIN_NAME} characters")
    return name


def _delete(table: Any, chain: str, entry: Any, mask: Any) -> bool:
    try:
        table.delete_entry(chain, entry, mask)
    except Exception:
        return False
    return True


def _names_missing_chain(jump: BuiltinJump, table: Any) -> bool:
    words = jump.args.split()
    targets = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-j", "-g")]
    return any(name.startswith(CHAIN_PREFIX) and not table.is_chain(name) for name in targets)


def _describe(command: RestoreCommand | None) -> str | None:
    if command is None:
        return None
    if command.op is Op.DECLARE:
        return f":{command.chain} {command.policy} [0:0]"
    args = f" {command.args}" if command.args else ""
    return f"{command.op.value} {command.chain}{args}"


@contextlib.contextmanager
def _xtables_lock(path: str) -> Iterator[None]:
    """Hold the lock the iptables tools take (flock on ``path``), as ``-w 5 -W 100000``."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"another app is holding the xtables lock ({path})") from exc
                time.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _jump_args(jumps: Sequence[BuiltinJump]) -> list[tuple[str, str, str, bool]]:
    return [(jump.table.value, jump.chain, jump.args, jump.first) for jump in jumps]


class _FamilyChild:
    """A :mod:`kproxy.iptables.libiptc_child` process and its request/answer pipe; it ends
    when this process does (its stdin closes)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self._lock = threading.Lock()

    @classmethod
    def start(cls) -> _FamilyChild:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "kproxy.iptables.libiptc_child"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except OSError as exc:
            raise BackendError(f"cannot start the libiptc IPv6 process: {exc}") from exc
        return cls(process)

    def call(self, method: str, args: Any) -> Any:
        with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            assert stdin is not None and stdout is not None
            try:
                stdin.write(json.dumps({"method": method, "args": args}) + "\n")
                stdin.flush()
                line = stdout.readline()
            except OSError as exc:
                raise BackendError(f"the libiptc IPv6 process is gone: {exc}") from exc
            if not line:
                raise BackendError(f"the libiptc IPv6 process exited "
                                   f"(status {self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "restore_error" in answer:
            # The message already names the line; the attributes are set without repeating it.
            error = RestoreError(answer["restore_error"], stderr=answer["stderr"])
            error.line_number, error.line = answer["line_number"], answer["line"]
            raise error
        if "backend_error" in answer:
            raise BackendError(answer["backend_error"])
        return answer["result"]
