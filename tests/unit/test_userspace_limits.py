"""Limits, budgets, the descriptor limit, and which endpoint addresses are never dialled."""

from __future__ import annotations

import resource

import pytest

from kproxy.model.types import IPFamily
from kproxy.userspace.limits import Cap, ConnectionBudget, RelayLimits, raise_nofile_limit
from kproxy.userspace.targets import Target, refusal_reason


def test_dial_timeouts_double_from_250_ms_up_to_2_s() -> None:
    assert RelayLimits().dial_timeouts() == (0.25, 0.5, 1.0, 2.0)
    assert RelayLimits(connect_retries=6).dial_timeouts() == (0.25, 0.5, 1.0, 2.0, 2.0, 2.0)
    assert RelayLimits(connect_timeout=0.4).dial_timeouts() == (0.25, 0.4, 0.4, 0.4)


@pytest.mark.parametrize(
    ("field", "value"),
    [("connect_timeout", 0), ("udp_idle_timeout", -1), ("max_connections_global", 0),
     ("pipe_size", 0), ("idle_timeout", -1), ("connect_retries", 0)],
)
def test_bad_limits_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"RelayLimits.{field}"):
        RelayLimits(**{field: value})  # type: ignore[arg-type]


def test_a_cap_counts_up_to_its_limit_and_wakes_waiters_on_release() -> None:
    cap = Cap(2)
    assert cap.try_acquire() and cap.try_acquire()
    assert not cap.try_acquire() and cap.exhausted
    woken: list[int] = []
    cap.on_release(lambda: woken.append(1) is None and len(woken) >= 2)
    cap.release()
    cap.try_acquire()
    cap.release()
    cap.release()
    assert woken == [1, 1]  # done after its second call: not called a third time
    with pytest.raises(RuntimeError):
        Cap(1).release()


def test_the_budget_has_separate_tcp_and_udp_caps() -> None:
    budget = ConnectionBudget.for_limits(
        RelayLimits(max_connections_global=3, max_udp_sessions_global=5)
    )
    assert (budget.connections.limit, budget.udp_sessions.limit) == (3, 5)


def test_the_descriptor_limit_is_raised_to_the_most_allowed() -> None:
    soft_before, hard_before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard_before), hard_before))
        soft, hard = raise_nofile_limit()
        assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft == hard >= hard_before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft_before, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))


@pytest.mark.parametrize(
    ("ip", "word"),
    [("127.0.0.1", "loopback"), ("127.3.4.5", "loopback"), ("::1", "loopback"),
     ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
     ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
     ("ff02::1", "multicast"), ("::ffff:127.0.0.1", "loopback"), ("not-an-ip", "not an IP")],
)
def test_addresses_that_are_never_dialled(ip: str, word: str) -> None:
    reason = refusal_reason(ip)
    assert reason is not None and word in reason


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.0.9", "2001:db8::5", "fd00::1"])
def test_endpoint_addresses_that_may_be_dialled(ip: str) -> None:
    assert refusal_reason(ip) is None


def test_targets_print_as_address_and_port() -> None:
    assert str(Target("10.0.0.1", 80)) == "10.0.0.1:80"
    assert str(Target("2001:db8::1", 443)) == "[2001:db8::1]:443"
    assert Target("2001:db8::1", 443).family is IPFamily.IPV6
