"""A relay that runs out of file descriptors keeps running and serves again once some close."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys
import textwrap

from userspace_support import PATIENCE, connect, greeter, read_line, tcp_backend

# A relay process with a descriptor limit of its own (so this test process keeps its own).
RELAY = textwrap.dedent(
    """
    import asyncio, sys
    from kproxy.clock import SystemClock
    from kproxy.model.types import IPFamily
    from kproxy.userspace.balancer import Balancer
    from kproxy.userspace.limits import ConnectionBudget, RelayLimits
    from kproxy.userspace.listener import open_tcp_listener
    from kproxy.userspace.stats import UserspaceStats
    from kproxy.userspace.targets import Target

    async def main() -> None:
        clock, limits, stats = SystemClock(), RelayLimits(), UserspaceStats()
        listener = await open_tcp_listener(
            "test/fds", balancer=Balancer(clock), limits=limits,
            budget=ConnectionBudget.for_limits(limits), stats=stats, clock=clock,
            family=IPFamily.IPV4, bind_host="127.0.0.1", refusal=lambda ip: None)
        listener.update([Target("127.0.0.1", int(sys.argv[1]))], None)
        print(listener.port, flush=True)
        loop = asyncio.get_running_loop()
        while (line := await loop.run_in_executor(None, sys.stdin.readline)):
            print(stats.failed_connections, int(listener.accepting), flush=True)

    asyncio.run(main())
    """
)
# Enough for the interpreter, the loop and a handful of relayed connections.
DESCRIPTOR_LIMIT = 48


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


async def test_running_out_of_descriptors_pauses_instead_of_crashing() -> None:
    backend = await tcp_backend(greeter("b"))
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RELAY, str(backend.port),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=limit_descriptors,
    )
    assert relay.stdin is not None and relay.stdout is not None
    try:
        port = int(await asyncio.wait_for(relay.stdout.readline(), PATIENCE))

        async def relay_state() -> tuple[int, bool]:
            """(connections failed, accepting) as the relay reports them."""
            assert relay.stdin is not None and relay.stdout is not None
            relay.stdin.write(b"?\n")
            await relay.stdin.drain()
            failed, accepting = (await asyncio.wait_for(relay.stdout.readline(), PATIENCE)).split()
            return int(failed), accepting == b"1"

        # Far more connections than the relay has descriptors for; the kernel completes
        # every handshake (or the relay resets one it had no descriptor to dial for).
        held = []
        for _ in range(DESCRIPTOR_LIMIT):
            with contextlib.suppress(ConnectionResetError):
                held.append((await connect(port))[1])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        while True:
            failed, accepting = await relay_state()
            if failed > 0 or not accepting:
                break  # out of descriptors: dials failed, or accepting paused
            assert loop.time() < deadline, "the relay never ran out of descriptors"
            await asyncio.sleep(0.01)
        for writer in held:
            writer.close()
        assert relay.returncode is None  # still running
        deadline = loop.time() + PATIENCE
        while True:  # and serving again once descriptors are free
            assert loop.time() < deadline, "the relay never served again"
            try:
                reader, writer = await connect(port)
                line = await read_line(reader)
            except ConnectionResetError:
                continue
            writer.close()
            if line == b"b\n":
                break
        assert relay.returncode is None
    finally:
        if relay.returncode is None:
            relay.kill()
        await relay.wait()
