"""Stale UDP conntrack cleanup: list flows, decide (``conntrack_plan``), delete them.

Call :meth:`ConntrackCleaner.reconcile` after every successful sync, as kube-proxy runs its
reconciler after every successful ``iptables-restore``.

* Listing shells out to ``conntrack -L -p udp -f FAMILY -o extended``: one netlink dump,
  fast (about 0.2 s for 20,000 flows).
* Deleting sends one ctnetlink delete per stale flow, by its original tuple, as kube-proxy
  does through its netlink library. The ``conntrack -D`` tool is no use here: every
  invocation (and every ``-R`` batch line) dumps the whole table again, about 70 ms per
  filter at 20,000 flows (14 s for 200 filters), growing with the table. The deletion
  runs as ``python -m kproxy.conntrack delete`` under the same ``command_prefix`` as the
  listing, so both always act on the same network namespace.

Failures are reported in the returned stats and logged (once per distinct error), never
raised: a failed cleanup only means stale flows live until their timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import struct
import sys
import typing
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from kproxy.clock import Clock, SystemClock
from kproxy.conntrack_plan import (
    FAMILY_FLAGS,
    UDP,
    ConntrackEntry,
    parse_listing,
    stale_udp_flows,
)
from kproxy.model.types import IPFamily, Protocol, ServicePort, ServicePortName
from kproxy.state import Snapshot

log = logging.getLogger(__name__)

DEFAULT_COMMAND_TIMEOUT: Final = 60.0
DELETE_MODULE: Final = "kproxy.conntrack"


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(typing.Protocol):
    async def __call__(self, argv: Sequence[str], stdin: str | None) -> CommandResult: ...


async def run_command(argv: Sequence[str], stdin: str | None) -> CommandResult:
    """Run a command without a shell; cancelling kills it. Missing programs raise OSError."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await process.communicate(None if stdin is None else stdin.encode())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None  # communicate() waited for the exit
    return CommandResult(process.returncode, stdout.decode(errors="replace"),
                         stderr.decode(errors="replace"))


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FamilyCleanup:
    """What one reconcile did for one IP family."""

    family: IPFamily
    listed: int = 0  # UDP flows listed
    unparsed: int = 0  # listing lines that were not flows
    stale: int = 0  # listed flows found stale
    deleted: int = 0  # stale flows the kernel deleted
    vanished: int = 0  # stale flows gone before their delete (timed out, or deleted by others)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class CleanupStats:
    families: tuple[FamilyCleanup, ...]

    @property
    def deleted(self) -> int:
        return sum(family.deleted for family in self.families)

    @property
    def stale(self) -> int:
        return sum(family.stale for family in self.families)

    @property
    def ok(self) -> bool:
        return all(family.error is None for family in self.families)

    def of(self, family: IPFamily) -> FamilyCleanup | None:
        return next((found for found in self.families if found.family is family), None)


# --- the cleaner ---------------------------------------------------------------------------


class ConntrackCleaner:
    """Deletes stale UDP flows of this node (or of ``command_prefix``'s namespace).

    ``families``: the IP families the proxy programs (one reconcile per family, as
    kube-proxy runs one per family proxier). ``command_prefix`` is put before every
    command, e.g. ``["ip", "netns", "exec", NS]``. ``clear_services_without_endpoints``
    opts into clearing flows of services scaled to zero or deleted (not what kube-proxy
    1.33 does; see ``conntrack_plan``). ``runner`` replaces the subprocess call in tests.
    """

    def __init__(
        self,
        *,
        families: Sequence[IPFamily] = (IPFamily.IPV4,),
        command_prefix: Sequence[str] = (),
        conntrack_binary: str = "conntrack",
        python: str = sys.executable,
        clear_services_without_endpoints: bool = False,
        runner: CommandRunner = run_command,
        clock: Clock | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self._families = tuple(dict.fromkeys(families))
        self._list_command = [*command_prefix, conntrack_binary]
        self._delete_command = [*command_prefix, python, "-m", DELETE_MODULE, "delete"]
        self._clear_without_endpoints = clear_services_without_endpoints
        self._runner = runner
        self._clock = clock or SystemClock()
        self._timeout = command_timeout
        self._last_errors: dict[IPFamily, str] = {}
        # UDP service ports seen by the previous reconcile, to name the deleted ones.
        self._previous_udp_ports: dict[ServicePortName, ServicePort] = {}

    async def reconcile(self, snapshot: Snapshot,
                        node_ips: Collection[str] | None = None) -> CleanupStats:
        """List, decide and delete, family by family. ``node_ips``: see ``stale_udp_flows``."""
        deleted_services = self._take_deleted_services(snapshot)
        results = []
        for family in self._families:
            result = await self._reconcile_family(family, snapshot, node_ips, deleted_services)
            self._log_outcome(result)
            results.append(result)
        return CleanupStats(tuple(results))

    def _take_deleted_services(self, snapshot: Snapshot) -> tuple[ServicePort, ...]:
        if not self._clear_without_endpoints:
            return ()
        current = {name: port for name, port in snapshot.services.items()
                   if port.protocol is Protocol.UDP}
        deleted = tuple(port for name, port in self._previous_udp_ports.items()
                        if name not in current)
        self._previous_udp_ports = current
        return deleted

    async def _reconcile_family(
        self, family: IPFamily, snapshot: Snapshot, node_ips: Collection[str] | None,
        deleted_services: tuple[ServicePort, ...],
    ) -> FamilyCleanup:
        started = self._clock.monotonic()
        listing = await self._run(
            [*self._list_command, "-L", "-p", UDP, "-f", FAMILY_FLAGS[family], "-o", "extended"])
        if isinstance(listing, str):
            return FamilyCleanup(family, error=f"listing failed: {listing}",
                                 seconds=self._clock.monotonic() - started)
        # Parsing and matching a large table takes a while: keep the event loop free.
        listed, unparsed, stale = await asyncio.to_thread(
            self._find_stale, listing.stdout, snapshot, node_ips, deleted_services)
        deleted = vanished = 0
        error = None
        if stale:
            deleted, vanished, error = await self._delete(stale)
        return FamilyCleanup(
            family, listed=listed, unparsed=unparsed, stale=len(stale), deleted=deleted,
            vanished=vanished, error=error, seconds=self._clock.monotonic() - started,
        )

    def _find_stale(
        self, listing: str, snapshot: Snapshot, node_ips: Collection[str] | None,
        deleted_services: tuple[ServicePort, ...],
    ) -> tuple[int, int, list[ConntrackEntry]]:
        """How many flows were listed, how many lines did not parse, and the stale flows."""
        entries, unparsed = parse_listing(listing)
        stale = stale_udp_flows(
            snapshot, entries, node_ips=node_ips,
            clear_services_without_endpoints=self._clear_without_endpoints,
            deleted_services=deleted_services,
        )
        return len(entries), unparsed, stale

    async def _delete(self, stale: Sequence[ConntrackEntry]) -> tuple[int, int, str | None]:
        outcome = await self._run(self._delete_command, stdin=encode_flow_lines(stale))
        if isinstance(outcome, str):
            return 0, 0, f"deleting failed: {outcome}"
        try:
            report = DeleteReport.from_json(outcome.stdout)
        except (ValueError, KeyError, TypeError) as problem:
            return 0, 0, f"deleting failed: unreadable report: {problem}"
        if not report.failures:
            return report.deleted, report.vanished, None
        shown = ", ".join(f"{name} x{count}" for name, count in report.failures.items())
        return report.deleted, report.vanished, f"deleting failed for some flows: {shown}"

    async def _run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult | str:
        """The command's result, or why it failed."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._runner(argv, stdin)
        except TimeoutError:
            return f"{' '.join(argv)} timed out after {self._timeout:g}s"
        except OSError as error:
            return f"cannot run {argv[0]}: {error}"
        if result.returncode != 0:
            detail = result.stderr.strip().splitlines()
            return f"exit status {result.returncode}: {detail[-1] if detail else 'no output'}"
        return result

    def _log_outcome(self, result: FamilyCleanup) -> None:
        previous = self._last_errors.get(result.family)
        if result.error is not None:
            if result.error != previous:
                log.warning("conntrack cleanup (%s): %s", result.family.value, result.error)
            self._last_errors[result.family] = result.error
            return
        if previous is not None:
            log.info("conntrack cleanup (%s) works again", result.family.value)
            del self._last_errors[result.family]
        if result.deleted:
            log.info("conntrack cleanup (%s): deleted %d stale UDP flows",
                     result.family.value, result.deleted)
        else:
            log.debug("conntrack cleanup (%s): %d UDP flows, none deleted",
                      result.family.value, result.listed)


# --- the flows handed to the delete helper -------------------------------------------------


def encode_flow_lines(entries: Iterable[ConntrackEntry]) -> str:
    """One ``FAMILY SRC DST SPORT DPORT ZONE`` line per flow (its original tuple)."""
    return "".join(
        f"{FAMILY_FLAGS[e.family]} {e.orig_src} {e.orig_dst} {e.orig_sport} {e.orig_dport} "
        f"{e.zone}\n"
        for e in entries
    )


@dataclass(frozen=True, slots=True)
class FlowKey:
    """The original tuple of a UDP flow: what a ctnetlink delete names."""

    family: IPFamily
    src: str
    dst: str
    sport: int
    dport: int
    zone: int


def decode_flow_lines(text: str) -> list[FlowKey]:
    families = {flag: family for family, flag in FAMILY_FLAGS.items()}
    keys = []
    for line in text.splitlines():
        if not line.strip():
            continue
        flag, src, dst, sport, dport, zone = line.split()
        keys.append(FlowKey(families[flag], src, dst, int(sport), int(dport), int(zone)))
    return keys


@dataclass(frozen=True, slots=True)
class DeleteReport:
    deleted: int
    vanished: int
    failures: dict[str, int]  # errno name -> how many deletes failed with it

    def to_json(self) -> str:
        return json.dumps({"deleted": self.deleted, "vanished": self.vanished,
                           "failures": self.failures})

    @classmethod
    def from_json(cls, text: str) -> DeleteReport:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError(f"not an object: {text[:80]!r}")
        return cls(int(fields["deleted"]), int(fields["vanished"]),
                   {str(k): int(v) for k, v in dict(fields["failures"]).items()})


# --- ctnetlink ------------------------------------------------------------------------------
# Values from linux/netlink.h, linux/netfilter/nfnetlink.h and nfnetlink_conntrack.h.

NETLINK_NETFILTER: Final = 12
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLA_F_NESTED: Final = 0x8000
NFNETLINK_V0: Final = 0
NFNL_SUBSYS_CTNETLINK: Final = 1
IPCTNL_MSG_CT_DELETE: Final = 2
CTA_TUPLE_ORIG: Final = 1
CTA_ZONE: Final = 18
CTA_TUPLE_IP: Final = 1
CTA_TUPLE_PROTO: Final = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM: Final = 1
CTA_PROTO_SRC_PORT: Final = 2
CTA_PROTO_DST_PORT: Final = 3
IPPROTO_UDP: Final = 17

_NLMSGHDR: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NFGENMSG: Final = struct.Struct("=BBH")  # family, version, resource id (big endian)
_NLMSGERR: Final = struct.Struct("=i")  # negative errno, or 0 for an ACK
_ATTR: Final = struct.Struct("=HH")  # length, type
# Deletes per send: their ACKs (each echoes the request) must fit the receive buffer.
_DELETES_PER_SEND: Final = 256
_ACK_TIMEOUT: Final = 10.0


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def encode_delete(key: FlowKey, sequence: int) -> bytes:
    """An IPCTNL_MSG_CT_DELETE request for the flow whose original tuple is ``key``."""
    if key.family is IPFamily.IPV6:
        address_family, src_kind, dst_kind = socket.AF_INET6, CTA_IP_V6_SRC, CTA_IP_V6_DST
    else:
        address_family, src_kind, dst_kind = socket.AF_INET, CTA_IP_V4_SRC, CTA_IP_V4_DST
    tuple_attr = _nested(
        CTA_TUPLE_ORIG,
        _nested(CTA_TUPLE_IP,
                _attr(src_kind, socket.inet_pton(address_family, key.src)),
                _attr(dst_kind, socket.inet_pton(address_family, key.dst))),
        _nested(CTA_TUPLE_PROTO,
                _attr(CTA_PROTO_NUM, bytes([IPPROTO_UDP])),
                _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", key.sport)),
                _attr(CTA_PROTO_DST_PORT, struct.pack("!H", key.dport))),
    )
    zone_attr = _attr(CTA_ZONE, struct.pack("!H", key.zone)) if key.zone else b""
    body = _NFGENMSG.pack(address_family, NFNETLINK_V0, 0) + tuple_attr + zone_attr
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body),
                            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                            NLM_F_REQUEST | NLM_F_ACK, sequence, 0)
    return header + body


def decode_acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence, errno) of every NLMSG_ERROR message in ``data``; errno 0 is success."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, sequence, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR:
            (code,) = _NLMSGERR.unpack_from(data, offset + _NLMSGHDR.size)
            yield sequence, -code
        offset += (length + 3) & ~3


def delete_flows(keys: Sequence[FlowKey]) -> DeleteReport:
    """Delete these flows in this process's network namespace (needs CAP_NET_ADMIN)."""
    deleted = vanished = 0
    failures: dict[str, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.settimeout(_ACK_TIMEOUT)
        for start in range(0, len(keys), _DELETES_PER_SEND):
            batch = keys[start:start + _DELETES_PER_SEND]
            sock.sendall(b"".join(encode_delete(key, start + index + 1)
                                  for index, key in enumerate(batch)))
            pending = set(range(start + 1, start + len(batch) + 1))
            while pending:
                for sequence, code in decode_acks(sock.recv(1 << 20)):
                    if sequence not in pending:
                        continue
                    pending.discard(sequence)
                    if code == 0:
                        deleted += 1
                    elif code == errno.ENOENT:
                        vanished += 1
                    else:
                        name = errno.errorcode.get(code, str(code))
                        failures[name] = failures.get(name, 0) + 1
    return DeleteReport(deleted, vanished, failures)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kproxy.conntrack delete``: delete the flows named on stdin, report JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["delete"]:
        print("usage: python -m kproxy.conntrack delete < flows", file=sys.stderr)
        return 2
    try:
        report = delete_flows(decode_flow_lines(sys.stdin.read()))
    except (OSError, ValueError) as error:
        print(f"conntrack delete: {error}", file=sys.stderr)
        return 1
    print(report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
