"""Network namespaces that are always deleted: the building block of the dev cluster lab.

Every namespace is named ``kp-<pid>-<tag>-<role>`` (e.g. ``kp-1234-a1b2-node1``): the pid and
the random tag make it unique on a shared machine, the role makes ``ip netns list`` readable.
Nothing here ever configures the host's own namespace: apart from ``ip netns add/delete/list/
pids``, every call is ``ip -n NS ...`` or ``ip netns exec NS ...``, and a veth pair is created
from inside one namespace with its peer placed directly in the other, so no link exists in
the host even for an instant.

Deletion is guaranteed in layers: the context manager deletes on any exit (exceptions and
KeyboardInterrupt included; SIGINT/SIGTERM/SIGHUP are deferred while it runs); a module
registry deletes whatever is still alive at interpreter exit, and on SIGTERM or SIGHUP (when
those still have their default action) just before the process dies; and
:func:`cleanup_stale` removes leftovers of this process's prefix.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any

NAMESPACE_PREFIX = "kp-"
# Linux's IFNAMSIZ is 16 including the terminating NUL.
MAX_LINK_NAME = 15
DEFAULT_COMMAND_TIMEOUT = 30.0
# How long a process gets between SIGTERM and SIGKILL at teardown.
STOP_GRACE_SECONDS = 2.0

Popen = subprocess.Popen[bytes]


class NamespaceError(RuntimeError):
    """An ``ip`` command (or a command run in a namespace) failed; the message carries stderr."""


def session_prefix() -> str:
    """The prefix of every namespace this process creates: ``kp-<pid>-``."""
    return f"{NAMESPACE_PREFIX}{os.getpid()}-"


def namespace_name(role: str, tag: str | None = None) -> str:
    """``kp-<pid>-<tag>-<role>``; a fresh random tag when none is given."""
    if not role or not all(c.isalnum() or c in "-_." for c in role):
        raise ValueError(f"namespace role must be non-empty [A-Za-z0-9._-]: {role!r}")
    return f"{session_prefix()}{tag or random_tag()}-{role}"


def random_tag() -> str:
    return secrets.token_hex(2)


def check_link_name(name: str) -> str:
    if not 0 < len(name) <= MAX_LINK_NAME or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"invalid link name (1-{MAX_LINK_NAME} chars, no '/' or spaces): {name!r}")
    return name


def _run_ip(argv: Sequence[str], *, stdin: str | None = None,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
    done = subprocess.run(["ip", *argv], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        shown = " ".join(argv)
        raise NamespaceError(f"ip {shown} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``), of every user of the machine."""
    return [line.split()[0] for line in _run_ip(["netns", "list"]).splitlines() if line.strip()]


def namespace_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (empty when it no longer exists)."""
    try:
        out = _run_ip(["netns", "pids", name])
    except NamespaceError:
        return []
    return [int(word) for word in out.split() if word.isdigit()]


# --- signal handling -----------------------------------------------------------------------

# Signals whose default action kills the interpreter without running atexit.
_FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while the block runs, then deliver them.

    Teardown must not be cut in half by a second Ctrl-C; Python handlers only run in the main
    thread, so elsewhere this is a no-op (the main thread is what receives them anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, *_FATAL_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _delete_then_die(signum: int, _frame: FrameType | None) -> None:
    # The default action, preceded by deleting our namespaces: the program still dies as it
    # would have (same status, no finally blocks), but leaves nothing behind. This never runs
    # in the middle of a create or close: those defer the signal.
    close_all()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


_fatal_handlers_installed = False


def _install_fatal_signal_handlers() -> None:
    global _fatal_handlers_installed
    if _fatal_handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _fatal_handlers_installed = True
    for sig in _FATAL_SIGNALS:
        # Only where the default disposition applies; someone else's handler stays in charge.
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _delete_then_die)


# --- registry ------------------------------------------------------------------------------

# Insertion-ordered, so the exit hook deletes in reverse creation order (pods before nodes).
_live: dict[str, NetNamespace] = {}
# Reentrant: the signal handler may run close_all() while the main thread holds it.
_live_lock = threading.RLock()


def live_namespaces() -> list[str]:
    """Names of the namespaces this process created and has not deleted yet."""
    with _live_lock:
        return list(_live)


def close_all() -> None:
    """Delete every namespace this process still owns (newest first)."""
    with _live_lock:
        owned = list(reversed(_live.values()))
    for ns in owned:
        with contextlib.suppress(Exception):
            ns.close()


atexit.register(close_all)


def cleanup_stale(prefix: str | None = None) -> list[str]:
    """Delete leftover namespaces whose name starts with ``prefix`` (default: this process's).

    Namespaces still owned by a live :class:`NetNamespace` of this process are kept. The
    prefix must be more specific than ``kp-`` so that another process's lab is never touched.
    Returns the deleted names.
    """
    wanted = prefix if prefix is not None else session_prefix()
    if not wanted.startswith(NAMESPACE_PREFIX) or len(wanted) <= len(NAMESPACE_PREFIX):
        raise ValueError(f"prefix must start with {NAMESPACE_PREFIX!r} and name a run: {wanted!r}")
    owned = set(live_namespaces())
    deleted = []
    for name in list_namespaces():
        if name.startswith(wanted) and name not in owned:
            _kill_namespace_processes(name)
            with contextlib.suppress(NamespaceError):
                _run_ip(["netns", "delete", name])
                deleted.append(name)
    return deleted


# --- processes -----------------------------------------------------------------------------


def stop_process(proc: Popen, grace: float = STOP_GRACE_SECONDS) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    # No group signal after the leader is reaped: its pid (the group id) may be reused by then.
    # Stragglers inside a lab namespace are killed when the namespace is deleted.
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def _signal_group(proc: Popen, sig: signal.Signals) -> None:
    # Processes are started in their own session, so their pid is their process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _kill_namespace_processes(name: str) -> None:
    # Only ever called for a namespace of ours: whatever runs inside it belongs to the lab.
    for pid in namespace_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for_line(proc: Popen, expected: str, timeout: float) -> None:
    """Read ``proc``'s stdout until a line equals ``expected``; raise if it exits or times out."""
    if proc.stdout is None:
        raise ValueError("process was started without stdout=PIPE")
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    pending = b""
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {expected!r} within {timeout}s (saw {seen[-5:]!r})")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = proc.wait()
            raise NamespaceError(f"process exited ({code}) before {expected!r} (saw {seen[-5:]!r})")
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            if line == expected:
                return
            seen.append(line)


# --- the namespace -------------------------------------------------------------------------


class NetNamespace:
    """A named network namespace, created on enter (or :meth:`create`) and always deleted.

    ``lo`` is brought up at creation. Processes started with :meth:`popen` are killed before
    the namespace is deleted, and so is anything else still running inside it.
    """

    def __init__(self, role: str, *, tag: str | None = None) -> None:
        self.role = role
        self.name = namespace_name(role, tag)
        self._processes: list[Popen] = []
        self._created = False
        self._added = False  # `ip netns add` succeeded: the name is ours to delete
        self._closed = False

    def __repr__(self) -> str:
        return f"NetNamespace({self.name!r})"

    # lifecycle

    def create(self) -> NetNamespace:
        if self._created:
            return self
        if self._closed:
            raise NamespaceError(f"{self.name} was already deleted")
        _install_fatal_signal_handlers()
        with signals_deferred():
            with _live_lock:
                _live[self.name] = self
            self._created = True
            try:
                _run_ip(["netns", "add", self.name])
                self._added = True
                self.ip("link", "set", "lo", "up")
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Kill this namespace's processes and delete it; idempotent, never interrupted."""
        if self._closed or not self._created:
            self._closed = True
            return
        with signals_deferred():
            self._closed = True
            try:
                for proc in reversed(self._processes):
                    stop_process(proc)
                self._processes.clear()
                # Never delete a namespace of that name we failed to create: not ours.
                if self._added:
                    _kill_namespace_processes(self.name)
                    if namespace_exists(self.name):
                        _run_ip(["netns", "delete", self.name])
            finally:
                with _live_lock:
                    _live.pop(self.name, None)

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._created and not self._closed

    # commands

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped so it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float = DEFAULT_COMMAND_TIMEOUT, input: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and capture its output (text)."""
        self._require_alive()
        done = subprocess.run(self.exec_argv(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False, env=env)
        if check and done.returncode != 0:
            raise NamespaceError(f"{' '.join(argv)} in {self.name} failed ({done.returncode}): "
                                 f"{done.stderr.strip()}")
        return done

    def popen(self, argv: Sequence[str], **kwargs: Any) -> Popen:
        """Start a command inside the namespace; it is stopped when the namespace is deleted.

        It runs in its own session (so a terminal's Ctrl-C reaches the test, not the process,
        and teardown can kill the whole group); other keyword arguments go to ``Popen``.
        """
        self._require_alive()
        kwargs.setdefault("start_new_session", True)
        proc: Popen = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._processes.append(proc)
        return proc

    def stop(self, proc: Popen, grace: float = STOP_GRACE_SECONDS) -> int:
        """Stop a process started with :meth:`popen` now (e.g. to restart it)."""
        code = stop_process(proc, grace)
        if proc in self._processes:
            self._processes.remove(proc)
        return code

    def python_argv(self, module: str, *args: str) -> list[str]:
        """Command line running ``python -m module`` with this interpreter (the venv's)."""
        return [sys.executable, "-m", module, *args]

    def popen_python(self, module: str, *args: str, **kwargs: Any) -> Popen:
        """Start ``python -m module args...`` of this project inside the namespace."""
        return self.popen(self.python_argv(module, *args), **kwargs)

    def run_python(self, module: str, *args: str, check: bool = True,
                   timeout: float = DEFAULT_COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return self.run(self.python_argv(module, *args), check=check, timeout=timeout)

    def ip(self, *args: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
        """``ip -n NS args...``; returns stdout."""
        self._require_alive()
        return _run_ip(["-n", self.name, *args], timeout=timeout)

    def ip_batch(self, commands: Iterable[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Run several ``ip`` commands (one per line, without the ``ip``) in one process."""
        self._require_alive()
        script = "".join(f"{line}\n" for line in commands)
        if script:
            _run_ip(["-n", self.name, "-batch", "-"], stdin=script, timeout=timeout)

    def bridge_batch(self, commands: Iterable[str],
                     timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Run several ``bridge`` commands (FDB entries; one per line) inside this namespace."""
        self._require_alive()
        script = "".join(f"{line}\n" for line in commands)
        if script:
            self.run(["bridge", "-batch", "-"], input=script, timeout=timeout)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a (network) sysctl inside this namespace only."""
        self.sysctls({key: value})

    def sysctls(self, settings: Mapping[str, str | int]) -> None:
        # Only net.* keys exist per namespace (global net.core ones are not even visible
        # outside the host's namespace); anything else would change the whole machine.
        outside = [key for key in settings if not key.startswith("net.")]
        if outside:
            raise ValueError(f"not a per-namespace (net.*) sysctl: {outside}")
        if settings:
            pairs = [f"{key}={value}" for key, value in settings.items()]
            self.run(["sysctl", "-q", "-w", *pairs])

    def read_sysctl(self, key: str) -> str:
        return self.run(["sysctl", "-n", key]).stdout.strip()

    def add_veth(self, link: str, peer: NetNamespace, peer_link: str) -> None:
        """A veth pair: ``link`` here, ``peer_link`` in ``peer``, never in the host namespace."""
        self.ip(*veth_command(link, peer.name, peer_link).split())

    def _require_alive(self) -> None:
        if not self.alive:
            raise NamespaceError(f"{self.name} is not alive (create it first, or it was deleted)")


def veth_command(link: str, peer_namespace: str, peer_link: str) -> str:
    """The ``ip -n HERE`` command creating ``link`` here and its peer directly in the other one."""
    check_link_name(link)
    check_link_name(peer_link)
    return f"link add {link} type veth peer name {peer_link} netns {peer_namespace}"

