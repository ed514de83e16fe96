"""The bounded-frequency sync runner on a fake clock: no test here sleeps in real time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kproxy.clock import FakeClock
from kproxy.runner import SyncRunner


class RecordingSync:
    """A sync function that records the fake time of each call and fails on demand."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []
        self.fail_next = 0

    async def __call__(self) -> bool:
        self.calls.append(self.clock.monotonic() - 1000.0)
        if self.fail_next:
            self.fail_next -= 1
            return False
        return True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture
def recorder(clock: FakeClock) -> RecordingSync:
    return RecordingSync(clock)


@pytest.fixture
async def runner(clock: FakeClock, recorder: RecordingSync) -> AsyncIterator[SyncRunner]:
    sync_runner = SyncRunner(recorder, clock=clock, min_interval=1.0, max_interval=30.0)
    task = asyncio.create_task(sync_runner.run_forever())
    await clock.settle()
    yield sync_runner
    sync_runner.stop()
    await clock.advance(60)
    await asyncio.wait_for(task, 1)


async def test_nothing_runs_before_the_first_request(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    await clock.advance(100)
    assert recorder.calls == []


async def test_first_request_runs_at_once(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    await clock.advance(5)
    runner.request()
    await clock.settle()
    assert recorder.calls == [5.0]


async def test_burst_of_requests_coalesces_within_min_interval(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    runner.request()
    await clock.settle()
    for _ in range(10):
        runner.request()
        await clock.advance(0.05)
    await clock.advance(2)
    # One sync for the first request, one (at the min interval) for the ten that followed.
    assert recorder.calls == [0.0, 1.0]


async def test_request_after_quiet_period_runs_immediately(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    runner.request()
    await clock.advance(10)
    runner.request()
    await clock.settle()
    assert recorder.calls == [0.0, 10.0]


async def test_periodic_sync_every_max_interval_without_requests(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    runner.request()
    await clock.advance(95)
    assert recorder.calls == [0.0, 30.0, 60.0, 90.0]


async def test_failed_sync_retries_with_doubling_backoff_capped_at_max(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    recorder.fail_next = 7
    runner.request()
    await clock.advance(120)
    # Failures at 0, 1, 3, 7, 15, 31, 61 (delays 1, 2, 4, 8, 16, 30); success at 91; then periodic.
    assert recorder.calls[:8] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]
    assert runner.syncs_failed == 7


async def test_success_resets_the_backoff(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    recorder.fail_next = 2
    runner.request()
    await clock.advance(4)  # fail at 0, fail at 1, succeed at 3
    recorder.fail_next = 1
    runner.request()
    await clock.advance(3)  # fail at 4, retry after the initial delay again: 5
    assert recorder.calls == [0.0, 1.0, 3.0, 4.0, 5.0]


async def test_exception_in_sync_counts_as_failure_and_is_retried(
    clock: FakeClock,
) -> None:
    calls: list[float] = []

    async def explode_once() -> bool:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            raise RuntimeError("boom")
        return True

    sync_runner = SyncRunner(explode_once, clock=clock, min_interval=0.5, max_interval=10)
    task = asyncio.create_task(sync_runner.run_forever())
    sync_runner.request()
    await clock.advance(2)
    sync_runner.stop()
    await clock.advance(20)
    await asyncio.wait_for(task, 1)
    assert calls == [1000.0, 1001.0]  # retry delay is at least one second
    assert sync_runner.syncs_failed == 1


async def test_request_during_sync_queues_one_more_sync(clock: FakeClock) -> None:
    calls: list[float] = []
    sync_runner: SyncRunner

    async def slow_sync() -> bool:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            sync_runner.request()  # a change arrives while this sync is running
        return True

    sync_runner = SyncRunner(slow_sync, clock=clock, min_interval=2, max_interval=60)
    task = asyncio.create_task(sync_runner.run_forever())
    sync_runner.request()
    await clock.advance(5)
    sync_runner.stop()
    await clock.advance(100)
    await asyncio.wait_for(task, 1)
    assert calls == [1000.0, 1002.0]


async def test_pending_request_time_is_exposed_until_the_sync_starts(
    runner: SyncRunner, clock: FakeClock, recorder: RecordingSync
) -> None:
    runner.request()
    await clock.settle()
    runner.request()
    assert runner.times.oldest_pending_request == 1000.0
    await clock.advance(1)
    assert runner.times.oldest_pending_request is None
    assert runner.times.last_sync_success == 1001.0
