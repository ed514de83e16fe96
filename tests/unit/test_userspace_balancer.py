"""Balancer: round robin, ClientIP affinity on a fake clock, failing endpoints skipped."""

from __future__ import annotations

import pytest

from kproxy.clock import FakeClock
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.targets import Target

A, B, C = Target("10.0.0.1", 80), Target("10.0.0.2", 80), Target("10.0.0.3", 80)


def picks(balancer: Balancer, count: int, client: str = "192.0.2.1") -> list[Target | None]:
    return [balancer.pick(client) for _ in range(count)]


def test_round_robin_visits_every_target_in_turn() -> None:
    balancer = Balancer(FakeClock())
    balancer.update([A, B, C], None)
    assert picks(balancer, 7) == [A, B, C, A, B, C, A]


def test_no_targets_picks_nothing() -> None:
    balancer = Balancer(FakeClock())
    assert balancer.pick("192.0.2.1") is None
    balancer.update([A], None)
    balancer.update([], None)
    assert balancer.pick("192.0.2.1") is None


def test_an_update_continues_the_rotation_after_the_last_pick() -> None:
    balancer = Balancer(FakeClock())
    balancer.update([A, B, C], None)
    assert picks(balancer, 2) == [A, B]
    balancer.update([A, B, C, Target("10.0.0.4", 80)], None)
    assert picks(balancer, 2) == [C, Target("10.0.0.4", 80)]
    balancer.update([C, A], None)  # the last pick is gone: start over
    assert picks(balancer, 2) == [C, A]


def test_duplicates_are_one_target() -> None:
    balancer = Balancer(FakeClock())
    balancer.update([A, A, B], None)
    assert balancer.targets == (A, B)


def test_exclude_skips_the_targets_already_tried() -> None:
    balancer = Balancer(FakeClock())
    balancer.update([A, B, C], None)
    assert balancer.pick("c", exclude=[A]) == B
    assert balancer.pick("c", exclude=[A, B, C]) is None


async def test_affinity_keeps_a_client_on_its_target_while_it_comes_back_in_time() -> None:
    clock = FakeClock()
    balancer = Balancer(clock)
    balancer.update([A, B], 100.0)
    assert balancer.pick("198.51.100.1") == A
    assert balancer.pick("198.51.100.2") == B
    for _ in range(5):
        await clock.advance(90.0)  # each visit within the timeout of the previous one
        assert balancer.pick("198.51.100.1") == A
    await clock.advance(101.0)
    assert balancer.pick("198.51.100.1") == A  # expired: round robin, whose turn is A's
    assert balancer.pick("198.51.100.3") == B


async def test_affinity_expires_after_the_timeout_on_the_injected_clock() -> None:
    clock = FakeClock()
    balancer = Balancer(clock)
    balancer.update([A, B], 10.0)
    assert balancer.pick("c1") == A
    assert balancer.pick("c2") == B
    await clock.advance(10.5)
    # Both entries expired: c2 gets the next round-robin turn (A), c1 the one after (B),
    # and from then on c1 sticks to B.
    assert balancer.pick("c2") == A
    assert balancer.pick("c1") == B
    assert balancer.pick("c1") == B


def test_affinity_entries_of_removed_targets_are_dropped() -> None:
    balancer = Balancer(FakeClock())
    balancer.update([A, B], 100.0)
    assert balancer.pick("c1") == A
    balancer.update([B, C], 100.0)
    assert balancer.pick("c1") in (B, C)
    chosen = balancer.pick("c1")
    assert balancer.pick("c1") == chosen


def test_turning_affinity_off_forgets_every_client() -> None:
    balancer = Balancer(FakeClock())
    balancer.update([A, B], 100.0)
    assert picks(balancer, 3, "c1") == [A, A, A]
    balancer.update([A, B], None)
    assert picks(balancer, 2, "c1") == [B, A]


async def test_a_target_failing_repeatedly_is_skipped_until_the_cooldown_ends() -> None:
    clock = FakeClock()
    balancer = Balancer(clock, failure_threshold=2, failure_cooldown=30.0)
    balancer.update([A, B], None)
    balancer.report_failure(A)
    assert picks(balancer, 2) == [A, B]  # one failure is not enough
    balancer.report_failure(A)
    assert balancer.is_skipped(A)
    assert picks(balancer, 3) == [B, B, B]
    await clock.advance(31.0)
    assert not balancer.is_skipped(A)
    assert set(picks(balancer, 2)) == {A, B}


def test_success_clears_the_failure_count() -> None:
    balancer = Balancer(FakeClock(), failure_threshold=2)
    balancer.update([A, B], None)
    balancer.report_failure(A)
    balancer.report_success(A)
    balancer.report_failure(A)
    assert not balancer.is_skipped(A)


def test_when_every_target_is_skipped_they_are_still_tried() -> None:
    balancer = Balancer(FakeClock(), failure_threshold=1)
    balancer.update([A, B], None)
    balancer.report_failure(A)
    balancer.report_failure(B)
    assert balancer.pick("c") in (A, B)


def test_a_failure_releases_the_clients_stuck_to_that_target() -> None:
    balancer = Balancer(FakeClock(), failure_threshold=1)
    balancer.update([A, B], 100.0)
    assert balancer.pick("c1") == A
    balancer.report_failure(A)
    assert picks(balancer, 2, "c1") == [B, B]


def test_a_non_positive_affinity_timeout_is_an_error() -> None:
    with pytest.raises(ValueError, match="affinity timeout"):
        Balancer(FakeClock()).update([A], 0)
