"""A client for lab tests, run inside a namespace; prints one JSON result per attempt.

``python -m kproxy.devcluster.probe {tcp,udp,http,sctp} HOST PORT [--count N] [--timeout S]
[--source-ip IP] [--source-port P] [--payload-size N]``

Every attempt uses a new connection (or a new UDP socket), so a load-balanced service spreads
attempts over its endpoints. A result is either ``{"ok": true, "pod": ..., "client": ...,
"server": ..., ...}`` with what the pod server reported, or ``{"ok": false, "error": KIND,
"detail": ...}`` where KIND is one of :data:`ERROR_KINDS` - so a test can tell a fast
``refused`` (RST / ICMP port unreachable) from a ``timeout`` (dropped) or ``unreachable``
(no route, or ICMP host/net unreachable).

* ``tcp``/``sctp``: sends one line (``ping``, or ``--payload-size`` bytes) and reads the JSON
  line back; with ``--payload-size 0`` it sends nothing and reads the server's greeting.
* ``http``: one ``GET /`` (a ``POST`` with a body of ``--payload-size`` bytes) with
  ``Connection: close``; ``status`` holds the HTTP status, and ``body`` the body of an answer
  that is not the pod server's (a health check port's JSON, say).
* ``udp``: one datagram (``ping`` or ``--payload-size`` bytes) and one reply.

``--source-port`` binds the client port (e.g. to test session affinity or conntrack); such
stream sockets are closed with RST so the next attempt can reuse the port at once.
``--source-ip`` binds the client address: one of the namespace's own addresses, for a client
with several (e.g. one inside a firewall's source ranges and one outside them).

:func:`run_probe` is the host-side API: it runs this module in a namespace and parses the
results into :class:`ProbeResult`.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kproxy.devcluster.netns import NetNamespace

PROTOCOLS = ("tcp", "udp", "http", "sctp")
ERROR_KINDS = ("refused", "timeout", "unreachable", "reset", "closed", "bad-response",
               "unsupported", "address-in-use", "error")
DEFAULT_TIMEOUT = 1.0
DEFAULT_PAYLOAD = b"ping"
PROBE_MODULE = "kproxy.devcluster.probe"
# Beyond the attempts' own timeouts: interpreter start-up, `ip netns exec`.
PROCESS_SLACK_SECONDS = 15.0


# --- results -------------------------------------------------------------------------------


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"10.0.0.1:80"`` or ``"[fd00::1]:80"`` -> (address, port)."""
    host, _, port = endpoint.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One attempt: what answered (``pod``), and the addresses the server saw."""

    ok: bool
    error: str | None = None
    detail: str | None = None
    pod: str | None = None
    client: str | None = None
    server: str | None = None
    status: int | None = None
    version: str | None = None  # the pod server's --app-version, when it has one
    body: str | None = None  # an HTTP answer that is not the pod server's
    received_bytes: int | None = None
    elapsed_ms: float = 0.0

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> ProbeResult:
        return cls(
            ok=bool(fields["ok"]),
            error=fields.get("error"),
            detail=fields.get("detail"),
            pod=fields.get("pod"),
            client=fields.get("client"),
            server=fields.get("server"),
            status=fields.get("status"),
            version=fields.get("version"),
            body=fields.get("body"),
            received_bytes=fields.get("bytes"),
            elapsed_ms=float(fields.get("elapsed_ms", 0.0)),
        )

    @property
    def client_ip(self) -> str | None:
        """The source address the server saw (after any NAT on the way)."""
        return None if self.client is None else split_endpoint(self.client)[0]

    @property
    def client_port(self) -> int | None:
        return None if self.client is None else split_endpoint(self.client)[1]

    @property
    def server_ip(self) -> str | None:
        return None if self.server is None else split_endpoint(self.server)[0]


def run_probe(ns: NetNamespace, proto: str, host: str, port: int, *, count: int = 1,
              timeout: float = DEFAULT_TIMEOUT, source_port: int | None = None,
              payload_size: int | None = None, source_ip: str | None = None
              ) -> list[ProbeResult]:
    """Run the probe in ``ns`` and return one result per attempt."""
    if proto not in PROTOCOLS:
        raise ValueError(f"proto must be one of {PROTOCOLS}: {proto!r}")
    args = [proto, host, str(port), "--count", str(count), "--timeout", str(timeout)]
    if source_port is not None:
        args += ["--source-port", str(source_port)]
    if source_ip is not None:
        args += ["--source-ip", source_ip]
    if payload_size is not None:
        args += ["--payload-size", str(payload_size)]
    done = ns.run_python(PROBE_MODULE, *args, check=False,
                         timeout=count * timeout * 2 + PROCESS_SLACK_SECONDS)
    results = [ProbeResult.from_json(json.loads(line)) for line in done.stdout.splitlines()
               if line.strip()]
    if done.returncode != 0 or len(results) != count:
        raise RuntimeError(f"probe {' '.join(args)} in {ns.name} failed ({done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return results


# --- attempts (run inside the namespace) ---------------------------------------------------


class ProbeFailure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def classify_error(error: BaseException) -> str:
    """One of :data:`ERROR_KINDS` for a socket error."""
    if isinstance(error, ProbeFailure):
        return error.kind
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(error, OSError):
        code = error.errno
        if code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN):
            return "unreachable"
        if code in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            return "address-in-use"
        if code in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT):
            return "unsupported"
    return "error"


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def payload(size: int | None) -> bytes:
    return DEFAULT_PAYLOAD if size is None else b"x" * size


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left


def _connect(kind: int, proto: int, host: str, port: int, deadline: Deadline,
             source_port: int | None, source_ip: str | None = None) -> socket.socket:
    sock = socket.socket(family_of(host), kind, proto)
    try:
        if source_port is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if kind == socket.SOCK_STREAM:
                # RST on close: no TIME_WAIT, so the same 4-tuple works for the next attempt.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if source_port is not None or source_ip is not None:
            wildcard = "::" if sock.family == socket.AF_INET6 else "0.0.0.0"
            sock.bind((source_ip or wildcard, source_port or 0))
        sock.settimeout(deadline.remaining())
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _read_until(sock: socket.socket, deadline: Deadline, done: Callable[[bytes], bool]) -> bytes:
    received = b""
    while not done(received):
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _decode_answer(raw: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(raw)
    except ValueError as error:
        raise ProbeFailure("bad-response", f"not JSON: {raw[:80]!r}") from error
    if not isinstance(fields, dict) or "pod" not in fields:
        raise ProbeFailure("bad-response", f"unexpected answer: {raw[:80]!r}")
    return fields


def attempt_stream(proto: int, host: str, port: int, deadline: Deadline,
                   source_port: int | None, payload_size: int | None,
                   source_ip: str | None = None) -> dict[str, Any]:
    with _connect(socket.SOCK_STREAM, proto, host, port, deadline, source_port,
                  source_ip) as sock:
        if payload_size != 0:
            sock.settimeout(deadline.remaining())
            sock.sendall(payload(payload_size) + b"\n")
        raw = _read_until(sock, deadline, lambda data: b"\n" in data)
    if not raw:
        raise ProbeFailure("closed", "connection closed without an answer")
    return _decode_answer(raw.split(b"\n", 1)[0])


def attempt_http(host: str, port: int, deadline: Deadline, source_port: int | None,
                 payload_size: int | None, source_ip: str | None = None) -> dict[str, Any]:
    body = b"" if not payload_size else payload(payload_size)
    method = "POST" if body else "GET"
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (f"{method} / HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: kproxy-probe\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with _connect(socket.SOCK_STREAM, socket.IPPROTO_TCP, host, port, deadline,
                  source_port, source_ip) as sock:
        sock.settimeout(deadline.remaining())
        sock.sendall(request)
        raw = _read_until(sock, deadline, lambda _data: False)
    if not raw:
        raise ProbeFailure("closed", "connection closed without a response")
    head, separator, response_body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    if not separator or len(status_line) < 2 or not status_line[1].isdigit():
        raise ProbeFailure("bad-response", f"not an HTTP response: {raw[:80]!r}")
    try:
        fields = _decode_answer(response_body) if response_body.strip() else {}
    except ProbeFailure:
        # Not a pod server (a health check port, say): the status and the body are the answer.
        fields = {"body": response_body.decode(errors="replace")}
    return {**fields, "status": int(status_line[1])}


def attempt_udp(host: str, port: int, deadline: Deadline, source_port: int | None,
                payload_size: int | None, source_ip: str | None = None) -> dict[str, Any]:
    # Connected, so an ICMP port unreachable shows up as ECONNREFUSED on recv.
    with _connect(socket.SOCK_DGRAM, 0, host, port, deadline, source_port, source_ip) as sock:
        sock.send(payload(payload_size))
        sock.settimeout(deadline.remaining())
        return _decode_answer(sock.recv(65536))


def attempt(proto: str, host: str, port: int, timeout: float, source_port: int | None,
            payload_size: int | None, source_ip: str | None = None) -> dict[str, Any]:
    """One attempt as a JSON-ready dict (never raises for network errors)."""
    started = time.monotonic()
    deadline = Deadline(timeout)
    try:
        if proto == "udp":
            fields = attempt_udp(host, port, deadline, source_port, payload_size, source_ip)
        elif proto == "http":
            fields = attempt_http(host, port, deadline, source_port, payload_size, source_ip)
        else:
            ip_proto = socket.IPPROTO_SCTP if proto == "sctp" else socket.IPPROTO_TCP
            fields = attempt_stream(ip_proto, host, port, deadline, source_port, payload_size,
                                    source_ip)
        result: dict[str, Any] = {"ok": True, **fields}
    except (OSError, ProbeFailure) as error:
        result = {"ok": False, "error": classify_error(error), "detail": str(error)}
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kproxy.devcluster.probe",
                                     description="Probe a lab endpoint; one JSON line per try.")
    parser.add_argument("proto", choices=PROTOCOLS)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per attempt (connect + answer)")
    parser.add_argument("--source-port", type=int, default=None)
    parser.add_argument("--source-ip", default=None,
                        help="bind the client to this address (one of this host's)")
    parser.add_argument("--payload-size", type=int, default=None)
    args = parser.parse_args(argv)
    for label, address in (("HOST", args.host), ("--source-ip", args.source_ip)):
        if address is None:
            continue
        try:
            ipaddress.ip_address(address)
        except ValueError:
            parser.error(f"{label} must be an IP address: {address!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for _ in range(args.count):
        result = attempt(args.proto, args.host, args.port, args.timeout, args.source_port,
                         args.payload_size, args.source_ip)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
