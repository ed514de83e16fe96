"""The iptables backend interface, its errors, and choosing a backend.

A backend is how restore payloads (see :mod:`kproxy.iptables.restore`) reach the kernel:
``iptables-restore`` of the nft or legacy flavour, python-iptables (libiptc, legacy only), or
the in-memory fake in tests. The proxier only talks to :class:`Backend`.

``--iptables-backend=auto`` picks nft or legacy the way kubernetes-sigs/iptables-wrappers
does: the variant holding kubelet's hint chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY in
the mangle table) wins; without them, legacy only if it has more rules than nft; nft
otherwise. Rules written with the other variant would run in an order nobody intended.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from kproxy.config.record import IptablesBackend
from kproxy.iptables.chunks import ChunkPolicy
from kproxy.iptables.kernelstate import KernelTable
from kproxy.iptables.restore import TableText
from kproxy.iptables.ruleset import BuiltinJump, Table
from kproxy.model.types import IPFamily

# kube-proxy's lock flags: wait up to 5 s for the xtables lock, polling every 100 ms (newer
# iptables ignore -W, with a warning on stderr that error messages leave out).
WAIT_ARGS = ("-w", "5", "-W", "100000")
# --noflush: only the chains a payload names change; --counters: as kube-proxy passes it.
RESTORE_ARGS = ("--noflush", "--counters")
# For commands about one rule or chain. Restores and saves get none, as in kube-proxy: their
# time grows with the ruleset (iptables-nft-restore takes minutes at 20,000 chains), killing
# one would fail every sync, and the -w 5 above bounds waiting for the lock.
COMMAND_TIMEOUT = 60.0
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
# Restore input is written to the tool in slices of this many characters, each encoded on
# its own: the payload (tens of MB at 10,000 services) never exists twice in memory.
STDIN_SLICE = 1 << 20
_IGNORED_STDERR = ("Ignoring deprecated --wait-interval option.",)


class BackendError(RuntimeError):
    """An iptables operation failed."""


class RestoreError(BackendError):
    """A restore payload was rejected; nothing of the failing table's transaction applied.

    ``line_number``/``line`` point at the line the tool (or the fake) complained about,
    when it said; with several tables in one payload, the tables before it were committed.
    """

    def __init__(self, message: str, *, stderr: str = "", line_number: int | None = None,
                 line: str | None = None) -> None:
        where = f" at line {line_number}: {line!r}" if line_number is not None else ""
        super().__init__(f"{message}{where}")
        self.stderr = stderr
        self.line_number = line_number
        self.line = line


class CommandError(BackendError):
    """An iptables command other than a restore failed."""

    def __init__(self, result: CommandResult) -> None:
        shown = " ".join(result.argv)
        stderr = clean_stderr(result.stderr).strip()
        super().__init__(f"{shown} failed ({result.returncode}): {stderr}")
        self.result = result


class Backend(Protocol):
    """What the proxier needs from iptables, per IP family."""

    @property
    def name(self) -> str:
        """``nft``, ``legacy``, ``libiptc`` (or ``fake``), for logs and metrics."""
        ...

    def families(self) -> tuple[IPFamily, ...]:
        """The IP families this backend can program here (IPv6 may be missing)."""
        ...

    @property
    def chunking(self) -> ChunkPolicy | None:
        """When a big full sync should be split into several transactions (None: never)."""
        ...

    def restore(self, family: IPFamily, table: Table, text: str) -> None:
        """Apply one table's ``--noflush`` payload atomically; raises :class:`RestoreError`."""
        ...

    def restore_all(self, family: IPFamily, payloads: Mapping[Table, TableText]) -> None:
        """Apply several tables' payloads in one go (each table atomic on its own)."""
        ...

    def save(self, family: IPFamily, table: Table | None = None) -> str:
        """``iptables-save`` text of one table, or of every existing table."""
        ...

    def read_tables(self, family: IPFamily) -> dict[Table, KernelTable]:
        """kproxy's chains and the builtin chains' rules, per table, in one read."""
        ...

    def ensure_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        """Insert each jump that is missing (at the top when ``first``); returns how many."""
        ...

    def remove_jumps(self, family: IPFamily, jumps: Sequence[BuiltinJump]) -> int:
        """Delete every copy of each jump; returns how many rules were deleted."""
        ...

    def list_kproxy_chains(self, family: IPFamily, table: Table) -> set[str]:
        """Names of the kproxy chains the kernel has in ``table``."""
        ...

    def chain_exists(self, family: IPFamily, table: Table, chain: str) -> bool:
        """Whether ``chain`` exists (the canary check after an external flush)."""
        ...


# --- running commands ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# A command's input: one text, or several written one after the other (never joined).
Stdin = str | Sequence[str] | None


class CommandRunner(Protocol):
    def __call__(self, argv: Sequence[str], stdin: Stdin = None, *,
                 timeout: float | None = COMMAND_TIMEOUT) -> CommandResult: ...


def run_command(argv: Sequence[str], stdin: Stdin = None, *,
                timeout: float | None = COMMAND_TIMEOUT) -> CommandResult:
    """Run a command and capture its output; a missing program is exit status 127.

    Several input texts are streamed (see :data:`STDIN_SLICE`); then ``timeout`` only
    bounds waiting for the exit after the input is written.
    """
    if stdin is not None and not isinstance(stdin, str):
        return _run_streaming(argv, stdin, timeout)
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        return CommandResult(tuple(argv), 127, "", str(exc))
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
    return CommandResult(tuple(argv), done.returncode, done.stdout, clean_stderr(done.stderr))


def _run_streaming(argv: Sequence[str], texts: Sequence[str],
                   timeout: float | None) -> CommandResult:
    # Output goes to files, not pipes: nobody has to read them while the input is written.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=out,
                                       stderr=err)
        except FileNotFoundError as exc:
            return CommandResult(tuple(argv), 127, "", str(exc))
        assert process.stdin is not None
        # A broken pipe means it exited early (a bad line): its status and stderr say why.
        with contextlib.suppress(BrokenPipeError):
            try:
                _write_slices(process.stdin, texts)
            finally:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
        return CommandResult(tuple(argv), returncode, _read(out), clean_stderr(_read(err)))


def _write_slices(stream: IO[bytes], texts: Sequence[str]) -> None:
    for text in texts:
        for start in range(0, len(text), STDIN_SLICE):
            stream.write(text[start:start + STDIN_SLICE].encode())


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def clean_stderr(stderr: str) -> str:
    """stderr without the warnings every call of some iptables versions prints."""
    return "\n".join(line for line in stderr.splitlines() if line not in _IGNORED_STDERR)


_LINE_NUMBER = re.compile(r"line:? (\d+)")


def restore_error(result: CommandResult, payload: str | Sequence[str]) -> RestoreError:
    """A :class:`RestoreError` pointing at the payload line the tool named in its stderr."""
    stderr = clean_stderr(result.stderr).strip()
    found = _LINE_NUMBER.search(stderr)
    line_number = int(found.group(1)) if found else None
    line = None
    if line_number is not None:
        line = payload_line(payload, line_number)
    first = stderr.splitlines()[0] if stderr else f"exit status {result.returncode}"
    return RestoreError(f"{result.argv[0]} failed: {first}", stderr=stderr,
                        line_number=line_number, line=line)


def payload_line(payload: str | Sequence[str], number: int) -> str | None:
    """Line ``number`` (1-based) of a payload given as one text or several, None if absent."""
    texts = [payload] if isinstance(payload, str) else payload
    if number < 1:
        return None
    remaining = number
    for text in texts:
        count = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        if remaining <= count:
            return text.splitlines()[remaining - 1]
        remaining -= count
    return None


# --- choosing a backend --------------------------------------------------------------------


def detect_mode(requested: IptablesBackend, *, runner: CommandRunner = run_command,
                command_prefix: Sequence[str] = ()) -> IptablesBackend:
    """The backend to use: ``requested`` itself, or for ``auto`` the variant in use here."""
    if requested is not IptablesBackend.AUTO:
        return requested
    prefix = list(command_prefix)

    def output(*argv: str) -> str:
        # Best effort, as in iptables-wrappers: a failing or missing tool counts as empty.
        result = runner([*prefix, *argv], timeout=None)
        return result.stdout if result.ok else ""

    nft_mangle = output("iptables-nft-save", "-t", "mangle") + output(
        "ip6tables-nft-save", "-t", "mangle")
    if has_kubelet_hint(nft_mangle):
        return IptablesBackend.NFT
    # Not "-t mangle" for legacy: that would create the table in the kernel.
    legacy = output("iptables-legacy-save") + output("ip6tables-legacy-save")
    if has_kubelet_hint(legacy):
        return IptablesBackend.LEGACY
    nft = output("iptables-nft-save") + output("ip6tables-nft-save")
    if count_rules(legacy) > count_rules(nft):
        return IptablesBackend.LEGACY
    return IptablesBackend.NFT


_HINT = re.compile(r"^:(?:" + "|".join(KUBELET_HINT_CHAINS) + r")\s", re.MULTILINE)


def has_kubelet_hint(save_text: str) -> bool:
    return _HINT.search(save_text) is not None


def count_rules(save_text: str) -> int:
    return sum(1 for line in save_text.splitlines() if line.startswith("-"))


def open_backend(requested: IptablesBackend, *, command_prefix: Sequence[str] = (),
                 runner: CommandRunner = run_command) -> Backend:
    """A ready backend for ``--iptables-backend``; ``auto`` is resolved with :func:`detect_mode`.

    ``command_prefix`` (e.g. ``ip netns exec NS``) wraps every command; the libiptc backend
    works in this process's own namespace and cannot take one.
    """
    mode = detect_mode(requested, runner=runner, command_prefix=command_prefix)
    if mode is IptablesBackend.LIBIPTC:
        if command_prefix:
            raise ValueError("the libiptc backend runs in-process: no command prefix")
        from kproxy.iptables.libiptc_backend import LibiptcBackend

        return LibiptcBackend(runner=runner)
    from kproxy.iptables.restore_backend import RestoreBackend

    return RestoreBackend(mode, command_prefix=command_prefix, runner=runner)
