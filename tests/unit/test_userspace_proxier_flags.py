"""The userspace relay flags: parsed, defaulted, rejected with the flag's name."""

from __future__ import annotations

import pytest

from kproxy.config import ConfigError, ProxyConfig, parse_run_config


def resolve(argv: list[str]) -> ProxyConfig:
    return parse_run_config(argv, gethostname=lambda: "node-1")


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--userspace-endpoint-grace=2s"], "userspace_endpoint_grace", 2.0),
        (["--userspace-drain-grace=500ms"], "userspace_drain_grace", 0.5),
        (["--userspace-max-connections=5000"], "userspace_max_connections", 5000),
        ([], "userspace_endpoint_grace", 30.0),
        ([], "userspace_drain_grace", 5.0),
        ([], "userspace_max_connections", 100_000),
    ],
)
def test_userspace_relay_flags(argv: list[str], field: str, expected: object) -> None:
    assert getattr(resolve(argv), field) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--userspace-max-connections=0"], "userspace-max-connections.*positive integer"),
        (["--userspace-max-connections=many"], "userspace-max-connections.*positive integer"),
        (["--userspace-endpoint-grace=0s"], "userspace-endpoint-grace"),
        (["--userspace-drain-grace=-1s"], "userspace-drain-grace"),
    ],
)
def test_userspace_relay_flags_rejected(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(argv)
