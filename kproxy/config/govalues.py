"""Go's spelling of booleans, integers and durations, as kube-proxy's flags and file accept them.

kube-proxy parses flags with pflag, which uses Go's ``strconv`` and ``time`` packages, and its
configuration file stores durations as Go duration strings. Manifests written for kube-proxy
therefore use Go syntax (``--masquerade-all=T``, ``--iptables-sync-period=1m0s``,
``--oom-score-adj=-0x10``); accepting exactly that syntax is what makes them work unchanged.
"""

from __future__ import annotations

import re
from fractions import Fraction

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

NANOSECONDS_PER_SECOND = 1_000_000_000
_MAX_DURATION_NS = (1 << 63) - 1

# Go's duration units, in nanoseconds. Both micro signs are accepted, as Go does.
_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": NANOSECONDS_PER_SECOND,
    "m": 60 * NANOSECONDS_PER_SECOND,
    "h": 3600 * NANOSECONDS_PER_SECOND,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_DIGITS_WITH_UNDERSCORES = {
    2: re.compile(r"[01]+(?:_?[01]+)*"),
    8: re.compile(r"[0-7]+(?:_?[0-7]+)*"),
    10: re.compile(r"[0-9]+(?:_?[0-9]+)*"),
    16: re.compile(r"[0-9a-fA-F]+(?:_?[0-9a-fA-F]+)*"),
}


def parse_go_bool(text: str) -> bool:
    """Parse a boolean as Go's ``strconv.ParseBool`` does (pflag's bool flags use it)."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def parse_go_int(text: str, *, bits: int = 32) -> int:
    """Parse a signed integer as ``strconv.ParseInt(text, 0, bits)`` does (pflag's int flags).

    Base 0 means a ``0x``, ``0o`` or ``0b`` prefix selects hex, octal or binary, a bare leading
    ``0`` selects octal, and single underscores may separate digits.
    """
    body = text[1:] if text[:1] in "+-" else text
    base, digits = _split_base(body)
    if _DIGITS_WITH_UNDERSCORES[base].fullmatch(digits) is None:
        raise ValueError(f"must be an integer, got {text!r}")
    value = int(digits.replace("_", ""), base)
    if text.startswith("-"):
        value = -value
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not low <= value <= high:
        raise ValueError(f"must be an integer between {low} and {high}, got {text!r}")
    return value


def _split_base(body: str) -> tuple[int, str]:
    """Split Go's base prefix off; after a prefix one underscore may precede the digits."""
    prefixes = {"0x": 16, "0o": 8, "0b": 2}
    base = prefixes.get(body[:2].lower())
    if base is not None:
        return base, _drop_one_underscore(body[2:])
    if len(body) > 1 and body.startswith("0"):
        return 8, _drop_one_underscore(body[1:])
    return 10, body


def _drop_one_underscore(digits: str) -> str:
    return digits[1:] if digits.startswith("_") else digits


def parse_go_duration(text: str) -> int:
    """Parse a duration as Go's ``time.ParseDuration`` does; returns nanoseconds.

    Accepts a sign, then one or more decimal numbers each with a unit (``ns``, ``us``/``µs``,
    ``ms``, ``s``, ``m``, ``h``), e.g. ``300ms``, ``-1.5h``, ``2h45m``; a bare ``0`` is allowed.
    """
    rest = text[1:] if text[:1] in "+-" else text
    negative = text.startswith("-")
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(_duration_error(text))
    total = Fraction(0)
    position = 0
    while position < len(rest):
        part = _DURATION_PART.match(rest, position)
        if part is None:
            raise ValueError(_duration_error(text))
        whole, fraction, unit = part.group(1), part.group(2) or "", part.group(3)
        if not whole and not fraction:
            raise ValueError(_duration_error(text))
        unit_ns = _UNIT_NS.get(unit)
        if not unit:
            raise ValueError(_duration_error(text))
        if unit_ns is None:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r}")
        number = int(whole or "0") + Fraction(int(fraction or "0"), 10 ** len(fraction))
        # Go truncates each part to whole nanoseconds before adding it up.
        total += int(number * unit_ns)
        position = part.end()
    limit = _MAX_DURATION_NS + (1 if negative else 0)
    if total > limit:
        raise ValueError(f"duration {text!r} is out of range")
    return -int(total) if negative else int(total)


def _duration_error(text: str) -> str:
    return f"must be a duration such as 30s, 1m0s or 500ms, got {text!r}"


def format_go_duration(nanoseconds: int) -> str:
    """Render nanoseconds as Go's ``Duration.String`` does: ``1m0s``, ``250ms``, ``1.5s``."""
    sign = "-" if nanoseconds < 0 else ""
    magnitude = abs(nanoseconds)
    if magnitude == 0:
        return "0s"
    if magnitude < NANOSECONDS_PER_SECOND:
        if magnitude < 1_000:
            return f"{sign}{magnitude}ns"
        if magnitude < 1_000_000:
            return f"{sign}{_decimal(magnitude, 3)}\u00b5s"
        return f"{sign}{_decimal(magnitude, 6)}ms"
    seconds_text = _decimal(magnitude % (60 * NANOSECONDS_PER_SECOND), 9)
    minutes, hours = (
        (magnitude // (60 * NANOSECONDS_PER_SECOND)) % 60,
        magnitude // (3600 * NANOSECONDS_PER_SECOND),
    )
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds_text}s"
    if minutes:
        return f"{sign}{minutes}m{seconds_text}s"
    return f"{sign}{seconds_text}s"


def _decimal(value: int, fraction_digits: int) -> str:
    """value / 10**fraction_digits, without trailing zeros or a needless decimal point."""
    whole, fraction = divmod(value, 10**fraction_digits)
    if not fraction:
        return str(whole)
    return f"{whole}.{str(fraction).rjust(fraction_digits, '0').rstrip('0')}"


def seconds(nanoseconds: int) -> float:
    return nanoseconds / NANOSECONDS_PER_SECOND
