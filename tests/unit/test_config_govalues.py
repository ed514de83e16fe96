"""Go syntax for booleans, integers and durations, as pflag and kube-proxy's file accept it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kproxy.config.govalues import (
    format_go_duration,
    parse_go_bool,
    parse_go_duration,
    parse_go_int,
)

SECOND = 1_000_000_000


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true_spellings(text: str) -> None:
    assert parse_go_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false_spellings(text: str) -> None:
    assert parse_go_bool(text) is False


@pytest.mark.parametrize("text", ["", "yes", "no", "on", "tRUE", " true", "2", "y"])
def test_other_bool_spellings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="must be true or false"):
        parse_go_bool(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("14", 14),
        ("+7", 7),
        ("-999", -999),
        ("0x1f", 31),
        ("0X1F", 31),
        ("010", 8),  # a leading zero means octal in Go
        ("0o17", 15),
        ("0b101", 5),
        ("-0b101", -5),
        ("1_000", 1000),
        ("0x_1f", 31),
        ("2147483647", 2**31 - 1),
        ("-2147483648", -(2**31)),
    ],
)
def test_go_int_accepts_base_prefixes(text: str, expected: int) -> None:
    assert parse_go_int(text) == expected


@pytest.mark.parametrize(
    "text", ["", "-", "abc", "1.5", "08", "0x", "_1", "1_", "1__0", " 1", "1e3", "2147483648"]
)
def test_go_int_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        parse_go_int(text)


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("-0", 0),
        ("0s", 0),
        ("30s", 30 * SECOND),
        ("1m0s", 60 * SECOND),
        ("500ms", SECOND // 2),
        ("250ms", SECOND // 4),
        ("1h2m3.5s", 3723 * SECOND + SECOND // 2),
        ("1.5h", 5400 * SECOND),
        ("-1.5h", -5400 * SECOND),
        ("+3m", 180 * SECOND),
        (".5s", SECOND // 2),
        ("1.s", SECOND),
        ("2h45m", (2 * 3600 + 45 * 60) * SECOND),
        ("1ns", 1),
        ("1us", 1000),
        ("1\u00b5s", 1000),
        ("1\u03bcs", 1000),
        ("15m", 900 * SECOND),
        ("1h1h", 7200 * SECOND),
        ("2562047h47m16.854775807s", 2**63 - 1),
    ],
)
def test_go_duration_parses(text: str, nanoseconds: int) -> None:
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize(
    "text", ["", "s", "30", "1h1", ".s", "-", "1e3s", "1 s", " 1s", "1S", "1d", "1.2.3s", "--1s"]
)
def test_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_go_duration_rejects_overflow() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_go_duration("2562047h47m16.854775808s")


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1500, "1.5\u00b5s"),
        (SECOND // 4, "250ms"),
        (SECOND, "1s"),
        (SECOND + SECOND // 2, "1.5s"),
        (60 * SECOND, "1m0s"),
        (90 * SECOND, "1m30s"),
        (3600 * SECOND, "1h0m0s"),
        (3723 * SECOND + SECOND // 2, "1h2m3.5s"),
        (-5400 * SECOND, "-1h30m0s"),
    ],
)
def test_go_duration_formats_like_go(nanoseconds: int, text: str) -> None:
    assert format_go_duration(nanoseconds) == text


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_go_duration_format_parses_back(nanoseconds: int) -> None:
    assert parse_go_duration(format_go_duration(nanoseconds)) == nanoseconds
