"""The server run in lab pods: tells every client which pod answered and whom it saw.

``python -m kproxy.devcluster.podserver --name web-1 --tcp 8080 --udp 8080`` prints ``READY``
on stdout once every port listens. Each answer carries ``pod`` (the ``--name``), ``client``
(the peer address as the server sees it, ``IP:PORT`` or ``[IPv6]:PORT``), ``server`` (the
local address the client reached) and, with ``--app-version``, ``version`` (the release of the
workload it belongs to), so a test can tell which endpoint answered and whether the source
address was translated on the way.

Stream ports (TCP, and SCTP where the kernel has it) — the first bytes decide, once:

* they start with an HTTP method and a space (``GET /...``): HTTP/1.1. Every request gets
  ``200`` with the JSON object as body (plus ``bytes``: the request body's length); the
  connection stays open for the next request unless the client sent ``Connection: close``
  (or spoke HTTP/1.0 without keep-alive).
* anything else: a line protocol. Every ``\\n``-terminated line gets one JSON line back with
  the same fields plus ``echo`` (the line, without its end) and ``bytes`` (its length). A last
  unterminated line is answered when the client half-closes.
* nothing within ``GREETING_DELAY`` (100 ms) of the accept: the server sends the JSON line once
  unprompted, so a client that only reads gets its answer; the connection then uses the line
  protocol. (An HTTP client that waits longer than that before sending its request would see
  that line first; HTTP clients send right after connecting.)

UDP ports: every datagram gets one JSON datagram back to its sender, with ``bytes`` (the size
received) instead of ``echo``; ``server`` is the datagram's destination address.

By default every port listens on all IPv4 and IPv6 addresses (one dual-stack socket each);
``--bind`` restricts it to one address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import ipaddress
import json
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GREETING_DELAY = 0.1
MAX_HEADER_BYTES = 64 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
# Not exported by the socket module on every Python; the Linux value.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr (the header destination)
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_ANCILLARY_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_IN_PKTINFO.size)


# --- pure helpers --------------------------------------------------------------------------


def format_endpoint(host: str, port: int) -> str:
    """``IP:PORT``, ``[IPv6]:PORT``; IPv4-mapped IPv6 addresses are shown as IPv4."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def endpoint_of(sockaddr: Any) -> str:
    """Format a socket address tuple (IPv4 or IPv6)."""
    return format_endpoint(str(sockaddr[0]), int(sockaddr[1]))


class StreamMode(enum.Enum):
    HTTP = "http"
    LINES = "lines"


def classify(prefix: bytes) -> StreamMode | None:
    """HTTP if the bytes start with ``METHOD ``, lines if they cannot; None until it is known."""
    undecided = False
    for method in HTTP_METHODS:
        token = method + b" "
        if prefix.startswith(token):
            return StreamMode.HTTP
        if token.startswith(prefix):
            undecided = True
    return None if undecided else StreamMode.LINES


class BadRequest(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = {token.strip() for token in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def parse_request(buffer: bytes) -> tuple[HttpRequest, int] | None:
    """The first complete request in ``buffer`` and how many bytes it used; None if partial."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEADER_BYTES:
            raise BadRequest("request header too large")
        return None
    head = buffer[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line: {head[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"bad header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest("chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as error:
        raise BadRequest("bad content-length") from error
    start = end + 4
    if length < 0:
        raise BadRequest("bad content-length")
    if len(buffer) < start + length:
        return None
    body = bytes(buffer[start:start + length])
    request = HttpRequest(parts[0], parts[1], parts[2], headers, body)
    return request, start + length


def render_response(status: int, reason: str, body: bytes, *, keep_alive: bool,
                    include_body: bool = True) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + (body if include_body else b"")


def answer(name: str, client: str, server: str, **extra: object) -> dict[str, object]:
    return {"pod": name, "client": client, "server": server, **_version_field(), **extra}


# The workload's version (``--app-version``), added to every answer when set; a process-wide
# setting because one server process is one pod.
_app_version: str | None = None


def _version_field() -> dict[str, object]:
    return {"version": _app_version} if _app_version is not None else {}


def json_line(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def destination_from_ancillary(ancillary: list[tuple[int, int, bytes]]) -> str | None:
    """The destination address of a received datagram, from IP(V6)_PKTINFO control data."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            raw, _ = _IN6_PKTINFO.unpack(data[:_IN6_PKTINFO.size])
            return socket.inet_ntop(socket.AF_INET6, raw)
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            _, _, raw = _IN_PKTINFO.unpack(data[:_IN_PKTINFO.size])
            return socket.inet_ntop(socket.AF_INET, raw)
    return None


# --- stream connections --------------------------------------------------------------------


class StreamSession(asyncio.Protocol):
    """One TCP (or SCTP) connection; see the module docstring for the protocol."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = bytearray()
        self.mode: StreamMode | None = None
        self.transport: asyncio.Transport | None = None
        self.client = self.server = "?"
        self.greeting: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.client = endpoint_of(transport.get_extra_info("peername"))
        self.server = endpoint_of(transport.get_extra_info("sockname"))
        self.greeting = asyncio.get_running_loop().call_later(GREETING_DELAY, self._greet)

    def _greet(self) -> None:
        if self.mode is None and not self.buffer and self.transport is not None:
            self.mode = StreamMode.LINES
            self.transport.write(json_line(answer(self.name, self.client, self.server)))

    def data_received(self, data: bytes) -> None:
        if self.greeting is not None:
            self.greeting.cancel()
        self.buffer += data
        if self.mode is None:
            self.mode = classify(bytes(self.buffer))
        if self.mode is StreamMode.LINES:
            self._answer_lines()
        elif self.mode is StreamMode.HTTP:
            self._answer_requests()

    def eof_received(self) -> bool:
        if self.mode is not StreamMode.HTTP and self.buffer:
            self._answer_line(bytes(self.buffer))
            self.buffer.clear()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.greeting is not None:
            self.greeting.cancel()
        self.transport = None

    def _answer_lines(self) -> None:
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            self._answer_line(line)
        if len(self.buffer) > MAX_LINE_BYTES and self.transport is not None:
            self.transport.close()

    def _answer_line(self, line: bytes) -> None:
        if self.transport is None:
            return
        text = line.decode(errors="replace").removesuffix("\r")
        self.transport.write(json_line(answer(
            self.name, self.client, self.server, echo=text, bytes=len(line))))

    def _answer_requests(self) -> None:
        while self.transport is not None:
            try:
                parsed = parse_request(bytes(self.buffer))
            except BadRequest as error:
                body = json.dumps({"error": str(error)}).encode()
                self.transport.write(render_response(400, "Bad Request", body, keep_alive=False))
                self.transport.close()
                return
            if parsed is None:
                return
            request, used = parsed
            del self.buffer[:used]
            body = json.dumps(answer(self.name, self.client, self.server,
                                     bytes=len(request.body))).encode()
            self.transport.write(render_response(
                200, "OK", body, keep_alive=request.keep_alive,
                include_body=request.method != "HEAD"))
            if not request.keep_alive:
                self.transport.close()
                return


# --- datagrams -----------------------------------------------------------------------------


class DatagramResponder:
    """Answers every datagram on one UDP socket (raw ``recvmsg``, to learn its destination)."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.fallback_server = endpoint_of(sock.getsockname())
        self.port = int(sock.getsockname()[1])

    def on_readable(self) -> None:
        while True:
            try:
                data, ancillary, _, sender = self.sock.recvmsg(65535, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. an ICMP error for an earlier reply; the selector is level-triggered,
                # so queued datagrams still get their turn.
                return
            destination = destination_from_ancillary(ancillary)
            server = (format_endpoint(destination, self.port) if destination is not None
                      else self.fallback_server)
            reply = json.dumps(answer(self.name, endpoint_of(sender), server, bytes=len(data)))
            with contextlib.suppress(OSError):
                self.sock.sendto(reply.encode(), sender)


# --- sockets -------------------------------------------------------------------------------


def open_socket(kind: int, proto: int, port: int, bind: str | None) -> socket.socket:
    """A bound socket on ``bind`` (default: every IPv4 and IPv6 address, falling back to IPv4)."""
    if bind is None:
        try:
            sock = socket.socket(socket.AF_INET6, kind, proto)
        except OSError:
            return open_socket(kind, proto, port, "0.0.0.0")
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = "::"
    else:
        family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
        sock = socket.socket(family, kind, proto)
        address = bind
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if kind == socket.SOCK_DGRAM:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(name: str, tcp: Sequence[int], udp: Sequence[int], sctp: Sequence[int],
                bind: str | None, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    datagram_sockets: list[socket.socket] = []
    streams = [(port, socket.IPPROTO_TCP) for port in tcp]
    for port in sctp:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        except OSError as error:
            print(f"podserver: SCTP unavailable ({error}), not serving port {port}",
                  file=sys.stderr)
            continue
        streams.append((port, socket.IPPROTO_SCTP))
    try:
        for port, proto in streams:
            sock = open_socket(socket.SOCK_STREAM, proto, port, bind)
            sock.listen(128)
            servers.append(await loop.create_server(lambda: StreamSession(name), sock=sock))
        for port in udp:
            sock = open_socket(socket.SOCK_DGRAM, 0, port, bind)
            datagram_sockets.append(sock)
            loop.add_reader(sock.fileno(), DatagramResponder(name, sock).on_readable)
        print("READY", flush=True)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        for sock in datagram_sockets:
            loop.remove_reader(sock.fileno())
            sock.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kproxy.devcluster.podserver",
        description="Answer TCP/HTTP/UDP/SCTP clients with which pod answered and whom it saw.")
    parser.add_argument("--name", default="podserver", help="reported as 'pod' in every answer")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--sctp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--bind", default=None, metavar="ADDR",
                        help="listen on this address only (default: all IPv4 and IPv6)")
    parser.add_argument("--app-version", default=None, metavar="VERSION",
                        help="reported as 'version' in every answer (a workload's release)")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(args.name, args.tcp, args.udp, args.sctp, args.bind, stop)


def main(argv: Sequence[str] | None = None) -> int:
    global _app_version
    args = parse_args(argv)
    _app_version = args.app_version
    if not (args.tcp or args.udp or args.sctp):
        print("podserver: nothing to serve (give --tcp, --udp or --sctp)", file=sys.stderr)
        return 2
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
