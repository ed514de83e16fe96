"""Helpers for kernel tests that run kproxy long-running on lab nodes.

* :class:`KproxyOnNode`: ``kproxy run`` as a background process in a node's namespace, with
  its log in a file (to wait for a sync, and to show on failure); start and stop again.
* :class:`HeldConnection`: one TCP connection from inside a namespace that stays open while
  the test does other things, speaking the pod server's line protocol. The client side runs
  this file as a script (``python kproxy_nodes.py HOST PORT TIMEOUT``): one line in on
  stdin, one line sent, one answer printed.
* :func:`eventually`: poll a check until it reports no problems, within a bound.
* :func:`comparable_save`: ``iptables-save`` text reduced to what a cleanup must restore.
"""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from kproxy.devcluster.lab import LabHost

POLL_INTERVAL = 0.2
# Bounds on waiting for kproxy; never a performance expectation.
START_LIMIT = 30.0


def eventually(check: Callable[[], list[str]], what: str, limit: float) -> None:
    """Run ``check`` until it returns no problems; fail with its last problems after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() > deadline:
            shown = "\n".join(problems[:10])
            raise AssertionError(f"{what}: not reached within {limit:g}s; last problems:\n{shown}")
        time.sleep(POLL_INTERVAL)


# --- kproxy as a node's background process ----------------------------------------------------


class KproxyOnNode:
    """``kproxy run`` in ``node``'s namespace; each start appends to the same log file."""

    def __init__(self, node: LabHost, args: Sequence[str], log_path: Path) -> None:
        self.node = node
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_start = 0  # where the current process's lines begin in the log

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError(f"kproxy already runs on {self.node.name}")
        self._log_file = self.log_path.open("ab")
        self._log_start = self._log_file.tell()
        self.proc = self.node.ns.popen_python(
            "kproxy.cli", "run", *self.args,
            stdout=subprocess.DEVNULL, stderr=self._log_file,
        )

    def stop(self) -> int:
        """SIGTERM (SIGKILL after a grace period); returns the exit status."""
        if self.proc is None:
            raise RuntimeError(f"kproxy does not run on {self.node.name}")
        code = self.node.ns.stop(self.proc)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def log(self) -> str:
        """What the current (or last) process logged."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def wait_for_log(self, pattern: str, limit: float = START_LIMIT) -> None:
        """Wait until the current process logs a line matching ``pattern`` (a regex)."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + limit
        while not compiled.search(self.log()):
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"kproxy on {self.node.name} is not running:\n"
                                     f"{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kproxy on {self.node.name} logged no /{pattern}/ "
                                     f"within {limit:g}s:\n{self.tail()}")
            time.sleep(POLL_INTERVAL)

    def wait_synced(self, limit: float = START_LIMIT) -> None:
        """Until the current process has written a full ruleset once."""
        self.wait_for_log(r"sync \(full\) took", limit)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def assert_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"kproxy on {self.node.name} exited:\n{self.tail()}")


# --- a TCP connection held open inside a namespace ---------------------------------------------


class HeldConnection:
    """A line-protocol connection from ``host``'s namespace to ``address:port``."""

    def __init__(self, host: LabHost, address: str, port: int, timeout: float = 2.0) -> None:
        self.host = host
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] = host.ns.popen(
            [sys.executable, __file__, address, str(port), str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        hello = self._read_line()
        if hello.get("connected") is not True:
            self.close()
            raise AssertionError(f"could not connect from {host.name} to {address}:{port}: "
                                 f"{hello}")
        self.local = str(hello["local"])

    def send(self, line: str) -> dict[str, Any]:
        """Send one line and return the pod server's JSON answer (or ``{"error": ...}``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_line()

    def _read_line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout + 10.0)
        raw = self.proc.stdout.readline() if ready else b""
        if not raw:
            return {"error": "the connection helper gave no answer"}
        answer: dict[str, Any] = json.loads(raw)
        return answer

    def close(self) -> None:
        self.host.ns.stop(self.proc)


def _hold_connection(address: str, port: int, timeout: float) -> int:
    """The client side of :class:`HeldConnection` (runs inside the namespace)."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as error:
        print(json.dumps({"connected": False, "error": str(error)}), flush=True)
        return 1
    local_address, local_port = sock.getsockname()[:2]
    print(json.dumps({"connected": True, "local": f"{local_address}:{local_port}"}),
          flush=True)
    reader = sock.makefile("rb")
    for line in sys.stdin:
        try:
            sock.sendall(line.rstrip("\n").encode() + b"\n")
            answer = reader.readline()
        except OSError as error:
            print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
            continue
        if not answer:
            print(json.dumps({"error": "connection closed"}), flush=True)
            continue
        print(answer.decode().strip(), flush=True)
    return 0


# --- iptables-save, comparable ----------------------------------------------------------------

_COUNTERS = re.compile(r"\[\d+:\d+\]")
_BUILTIN_DECLARATION = re.compile(r"^:[A-Z]+ ACCEPT$")


def comparable_save(text: str) -> dict[str, list[str]]:
    """Per table, its chain declarations and rules without counters or comments; a table
    with nothing but builtin chains at ACCEPT and no rules counts as absent (legacy and nft
    create tables on first use, and a cleanup leaves them empty)."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    name = ""
    for raw in text.splitlines():
        line = _COUNTERS.sub("[0:0]", raw).strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name, current = line[1:], []
            continue
        if line == "COMMIT":
            if current is not None and any(
                not _BUILTIN_DECLARATION.match(entry.replace(" [0:0]", "")) for entry in current
            ):
                tables[name] = current
            current = None
            continue
        if current is not None:
            current.append(line)
    return tables


if __name__ == "__main__":
    sys.exit(_hold_connection(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))


# --- what the libiptc backend can do here -----------------------------------------------------

# Builds, in one process as kproxy does, the NAT targets of IPv4 rules, then of IPv6 ones.
