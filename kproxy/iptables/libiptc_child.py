"""The IPv6 half of the libiptc backend, in a process of its own.

python-iptables cannot serve both families in one process: libxtables registers a target
extension (libxt_NAT.so holds DNAT and MASQUERADE) only for the family active when it is
first loaded, so once the IPv4 NAT targets are in use IPv6 cannot find them. This process
never touches IPv4: :class:`~kproxy.iptables.libiptc_backend.LibiptcBackend` starts it (in its
own network namespace) and sends it every IPv6 call, one JSON object a line on stdin, each
answered by one line on stdout. It exits when its stdin closes.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from kproxy.iptables.backend import BackendError, RestoreError
from kproxy.iptables.ruleset import BuiltinJump, Table
from kproxy.model.types import IPFamily

V6 = IPFamily.IPV6


def handle(backend: Any, method: str, args: Any) -> Any:
    """One call on the in-process IPv6 backend; the result as JSON-able data."""
    if method == "families":
        return [family.value for family in backend.families()]
    if method == "restore_all":
        backend.restore_all(V6, {Table(table): text for table, text in args.items()})
        return None
    if method in ("ensure_jumps", "remove_jumps"):
        jumps = [BuiltinJump(Table(t), chain, spec, first) for t, chain, spec, first in args]
        return getattr(backend, method)(V6, jumps)
    if method == "list_kproxy_chains":
        return sorted(backend.list_kproxy_chains(V6, Table(args)))
    if method == "chain_exists":
        return backend.chain_exists(V6, Table(args[0]), args[1])
    raise ValueError(f"unknown method {method!r}")


def serve(requests: IO[str], answers: IO[str]) -> None:
    from kproxy.iptables.libiptc_backend import LibiptcBackend, LibiptcUnavailable

    try:
        backend: Any = LibiptcBackend(only=V6)
    except LibiptcUnavailable as exc:
        backend, unavailable = None, str(exc)
    for line in requests:
        request = json.loads(line)
        answer: dict[str, Any]
        try:
            if backend is None:
                raise BackendError(unavailable)
            answer = {"result": handle(backend, request["method"], request["args"])}
        except RestoreError as exc:
            answer = {"restore_error": str(exc), "stderr": exc.stderr,
                      "line_number": exc.line_number, "line": exc.line}
        except (BackendError, ValueError) as exc:
            answer = {"backend_error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
