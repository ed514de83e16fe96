"""The conntrack cleaner's commands, batching and failure handling, with a scripted runner."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from types import MappingProxyType

import pytest

from kproxy.clock import FakeClock
from kproxy.conntrack import (
    CommandResult,
    ConntrackCleaner,
    DeleteReport,
    FamilyCleanup,
    FlowKey,
    decode_acks,
    decode_flow_lines,
    encode_delete,
    run_command,
)
from kproxy.conntrack import main as delete_main
from kproxy.model.types import (
    Endpoint,
    IPFamily,
    Protocol,
    ServicePort,
    ServicePortName,
    ServiceType,
)
from kproxy.state import Snapshot

PREFIX = ["ip", "netns", "exec", "kp-test"]


def udp_service(name: str, cluster_ip: str, port: int = 53) -> ServicePort:
    return ServicePort(ServicePortName("ns", name, "", Protocol.UDP), ServiceType.CLUSTER_IP,
                       (cluster_ip,), port, Protocol.UDP, port)


DNS = udp_service("dns", "10.96.0.10")
DNS6 = udp_service("dns6", "fd00:96::10")


def snapshot(*ports: tuple[ServicePort, tuple[Endpoint, ...]]) -> Snapshot:
    return Snapshot(
        generation=1,
        services=MappingProxyType({port.name: port for port, _ in ports}),
        endpoints=MappingProxyType({port.name: endpoints for port, endpoints in ports}),
        node=None, changed=frozenset(), node_changed=False)


def line(dst: str, reply_src: str, sport: int, *, dport: int = 53, reply_sport: int = 53) -> str:
    family = "ipv6     10" if ":" in dst else "ipv4     2"
    client = "fd00::2" if ":" in dst else "10.244.1.2"
    return (f"{family} udp      17 29 src={client} dst={dst} sport={sport} dport={dport} "
            f"src={reply_src} dst={client} sport={reply_sport} dport={sport} mark=0 use=1")


class ScriptedRunner:
    """Answers ``-L`` with a listing per family and the delete helper with a report."""

    def __init__(self, listings: dict[str, str]) -> None:
        self.listings = listings
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail_with: Callable[[list[str]], CommandResult | None] = lambda argv: None
        self.report: Callable[[list[str]], DeleteReport] = (
            lambda flows: DeleteReport(len(flows), 0, {}))

    async def __call__(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, stdin))
        failure = self.fail_with(argv)
        if failure is not None:
            return failure
        if "-L" in argv:
            family = argv[argv.index("-f") + 1]
            return CommandResult(0, self.listings.get(family, ""), "0 flow entries shown")
        assert argv[-3:] == ["-m", "kproxy.conntrack", "delete"]
        assert stdin is not None
        return CommandResult(0, self.report(stdin.splitlines()).to_json() + "\n", "")

    def deletions(self) -> list[str]:
        return [stdin or "" for argv, stdin in self.calls if argv[-1] == "delete"]


async def test_lists_and_deletes_in_the_namespace() -> None:
    runner = ScriptedRunner({"ipv4": "\n".join([
        line("10.96.0.10", "10.244.1.5", 40000),  # serving endpoint
        line("10.96.0.10", "10.244.3.3", 40001),  # removed endpoint
        line("10.96.0.10", "10.244.3.3", 40002) + " zone=7",
    ])})
    cleaner = ConntrackCleaner(command_prefix=PREFIX, python="/venv/python", runner=runner,
                               clock=FakeClock())
    stats = await cleaner.reconcile(snapshot((DNS, (Endpoint("10.244.1.5", 53),))))

    assert runner.calls[0] == ([*PREFIX, "conntrack", "-L", "-p", "udp", "-f", "ipv4",
                                "-o", "extended"], None)
    assert runner.calls[1] == (
        [*PREFIX, "/venv/python", "-m", "kproxy.conntrack", "delete"],
        "ipv4 10.244.1.2 10.96.0.10 40001 53 0\nipv4 10.244.1.2 10.96.0.10 40002 53 7\n")
    assert stats.of(IPFamily.IPV4) == FamilyCleanup(
        IPFamily.IPV4, listed=3, stale=2, deleted=2, seconds=0.0)
    assert stats.ok and stats.deleted == 2 and stats.stale == 2


async def test_nothing_stale_runs_no_delete() -> None:
    runner = ScriptedRunner({"ipv4": line("10.96.0.10", "10.244.1.5", 40000)})
    stats = await ConntrackCleaner(runner=runner).reconcile(
        snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
    assert len(runner.calls) == 1
    assert (stats.stale, stats.deleted, stats.ok) == (0, 0, True)


async def test_each_family_is_listed_and_cleaned_separately() -> None:
    runner = ScriptedRunner({
        "ipv4": line("10.96.0.10", "10.244.3.3", 40001),
        "ipv6": line("fd00:96::10", "fd00:10:244:3::3", 40001),
    })
    cleaner = ConntrackCleaner(families=[IPFamily.IPV4, IPFamily.IPV6], runner=runner)
    stats = await cleaner.reconcile(snapshot((DNS, (Endpoint("10.244.1.5", 53),)),
                                             (DNS6, (Endpoint("fd00:10:244:1::5", 53),))))
    assert [f.family for f in stats.families] == [IPFamily.IPV4, IPFamily.IPV6]
    assert [f.deleted for f in stats.families] == [1, 1]
    assert runner.deletions() == ["ipv4 10.244.1.2 10.96.0.10 40001 53 0\n",
                                  "ipv6 fd00::2 fd00:96::10 40001 53 0\n"]


async def test_vanished_flows_are_counted_apart() -> None:
    runner = ScriptedRunner({"ipv4": "\n".join(
        line("10.96.0.10", "10.244.3.3", port) for port in (40001, 40002, 40003))})
    runner.report = lambda flows: DeleteReport(2, 1, {})
    stats = await ConntrackCleaner(runner=runner).reconcile(
        snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
    family = stats.of(IPFamily.IPV4)
    assert family is not None
    assert (family.stale, family.deleted, family.vanished, family.error) == (3, 2, 1, None)


async def test_failed_listing_deletes_nothing_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    runner = ScriptedRunner({})
    runner.fail_with = lambda argv: CommandResult(
        1, "", "conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters\n")
    cleaner = ConntrackCleaner(runner=runner, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="kproxy.conntrack"):
        first = await cleaner.reconcile(snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
        second = await cleaner.reconcile(snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
    assert first == second
    failure = first.of(IPFamily.IPV4)
    assert failure is not None and failure.error is not None
    assert "listing failed: exit status 1" in failure.error
    assert "invalid parameters" in failure.error
    assert len(runner.calls) == 2  # two listings, no delete
    assert len([r for r in caplog.records if "listing failed" in r.message]) == 1


async def test_failed_delete_is_reported_with_what_was_found() -> None:
    runner = ScriptedRunner({"ipv4": line("10.96.0.10", "10.244.3.3", 40001)})
    runner.fail_with = lambda argv: (CommandResult(1, "", "conntrack delete: [Errno 1] EPERM\n")
                                     if argv[-1] == "delete" else None)
    stats = await ConntrackCleaner(runner=runner).reconcile(
        snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
    family = stats.of(IPFamily.IPV4)
    assert family is not None
    assert (family.stale, family.deleted) == (1, 0)
    assert family.error == "deleting failed: exit status 1: conntrack delete: [Errno 1] EPERM"
    assert not stats.ok


async def test_per_flow_failures_are_an_error() -> None:
    runner = ScriptedRunner({"ipv4": line("10.96.0.10", "10.244.3.3", 40001)})
    runner.report = lambda flows: DeleteReport(0, 0, {"EPERM": 1})
    stats = await ConntrackCleaner(runner=runner).reconcile(
        snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
    family = stats.of(IPFamily.IPV4)
    assert family is not None
    assert family.error == "deleting failed for some flows: EPERM x1"


async def test_unreadable_report_is_an_error() -> None:
    runner = ScriptedRunner({"ipv4": line("10.96.0.10", "10.244.3.3", 40001)})
    runner.fail_with = lambda argv: (CommandResult(0, "not json", "")
                                     if argv[-1] == "delete" else None)
    stats = await ConntrackCleaner(runner=runner).reconcile(
        snapshot((DNS, (Endpoint("10.244.1.5", 53),))))
    family = stats.of(IPFamily.IPV4)
    assert family is not None and family.error is not None
    assert family.error.startswith("deleting failed: unreadable report")


async def test_missing_binary_is_an_error_not_an_exception() -> None:
    cleaner = ConntrackCleaner(conntrack_binary="/nonexistent/conntrack")
    stats = await cleaner.reconcile(snapshot())
    family = stats.of(IPFamily.IPV4)
    assert family is not None and family.error is not None
    assert family.error.startswith("listing failed: cannot run /nonexistent/conntrack")


async def test_hanging_command_is_cut_off() -> None:
    async def hang(argv: Sequence[str], stdin: str | None) -> CommandResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stats = await ConntrackCleaner(runner=hang, command_timeout=0.01).reconcile(snapshot())
    family = stats.of(IPFamily.IPV4)
    assert family is not None and family.error is not None
    assert "timed out" in family.error


async def test_opt_in_remembers_services_deleted_since_the_last_reconcile() -> None:
    gone = udp_service("gone", "10.96.8.8")
    runner = ScriptedRunner({"ipv4": line("10.96.8.8", "10.244.1.50", 40001)})
    cleaner = ConntrackCleaner(runner=runner, clear_services_without_endpoints=True)
    before = await cleaner.reconcile(snapshot((gone, (Endpoint("10.244.1.50", 53),))))
    after = await cleaner.reconcile(snapshot())
    again = await cleaner.reconcile(snapshot())
    assert (before.stale, after.stale, again.stale) == (0, 1, 0)
    assert runner.deletions() == ["ipv4 10.244.1.2 10.96.8.8 40001 53 0\n"]


async def test_kube_proxy_default_leaves_deleted_services_alone() -> None:
    gone = udp_service("gone", "10.96.8.8")
    runner = ScriptedRunner({"ipv4": line("10.96.8.8", "10.244.1.50", 40001)})
    cleaner = ConntrackCleaner(runner=runner)
    await cleaner.reconcile(snapshot((gone, (Endpoint("10.244.1.50", 53),))))
    after = await cleaner.reconcile(snapshot())
    assert after.stale == 0 and runner.deletions() == []


# --- the delete helper's wire formats ---------------------------------------------------------


def test_flow_lines_round_trip() -> None:
    keys = decode_flow_lines("ipv4 10.0.0.1 10.96.0.10 40001 53 0\n\n"
                             "ipv6 fd00::2 fd00:96::10 40002 53 7\n")
    assert keys == [FlowKey(IPFamily.IPV4, "10.0.0.1", "10.96.0.10", 40001, 53, 0),
                    FlowKey(IPFamily.IPV6, "fd00::2", "fd00:96::10", 40002, 53, 7)]


def test_delete_request_header_names_ctnetlink_delete() -> None:
    request = encode_delete(FlowKey(IPFamily.IPV4, "10.0.0.1", "10.96.0.10", 40001, 53, 0), 9)
    length, kind, flags, sequence, _ = struct.unpack_from("=IHHII", request)
    assert length == len(request) and length % 4 == 0
    assert (kind, flags, sequence) == ((1 << 8) | 2, 0x1 | 0x4, 9)
    assert request[16] == socket.AF_INET
    assert socket.inet_aton("10.96.0.10") in request
    assert struct.pack("!H", 40001) in request


def test_acks_are_decoded_with_their_sequence() -> None:
    def ack(sequence: int, code: int) -> bytes:
        echoed = struct.pack("=IHHII", 16, 0x102, 5, sequence, 0)
        return struct.pack("=IHHII", 36, 2, 0, sequence, 0) + struct.pack("=i", code) + echoed

    data = ack(1, 0) + ack(2, -2) + ack(3, -1)
    assert list(decode_acks(data)) == [(1, 0), (2, 2), (3, 1)]


def test_helper_rejects_a_wrong_command_line() -> None:
    assert delete_main(["remove"]) == 2


def test_report_json_round_trip() -> None:
    report = DeleteReport(3, 1, {"EPERM": 2})
    assert DeleteReport.from_json(report.to_json()) == report


async def test_run_command_passes_stdin_and_returns_everything() -> None:
    result = await run_command(["sh", "-c", "cat; echo oops >&2; exit 3"], "hello\n")
    assert result == CommandResult(3, "hello\n", "oops\n")


async def test_run_command_missing_program_raises_oserror() -> None:
    with pytest.raises(OSError):
        await run_command(["/nonexistent/program"], None)
