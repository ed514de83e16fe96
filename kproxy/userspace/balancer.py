"""Which endpoint a new connection or UDP session goes to: round robin, ClientIP affinity,
and skipping endpoints that keep failing. Pure logic on an injected clock; no I/O."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kproxy.clock import Clock
from kproxy.userspace.targets import Target


@dataclass(slots=True)
class _Affinity:
    target: Target
    last_used: float


@dataclass(slots=True)
class _Health:
    consecutive_failures: int = 0
    skipped_until: float = 0.0


class Balancer:
    """Round robin over a service port's targets.

    With ClientIP affinity a client keeps its target while it keeps coming back within the
    timeout (measured from its last connection, as kube-proxy did). A target that failed
    ``failure_threshold`` dials in a row is skipped for ``failure_cooldown`` seconds, unless
    every candidate is being skipped: then they are tried anyway, since a service whose
    endpoints all fail is better tried than refused.
    """

    def __init__(
        self, clock: Clock, *, failure_threshold: int = 3, failure_cooldown: float = 10.0
    ) -> None:
        self._clock = clock
        self._failure_threshold = failure_threshold
        self._failure_cooldown = failure_cooldown
        self._targets: tuple[Target, ...] = ()
        self._next = 0
        self._affinity_timeout: float | None = None
        self._affinity: dict[str, _Affinity] = {}
        self._health: dict[Target, _Health] = {}
        self._next_affinity_sweep = 0.0

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._targets

    @property
    def affinity_timeout(self) -> float | None:
        return self._affinity_timeout

    def update(self, targets: Sequence[Target], affinity_timeout: float | None) -> None:
        if affinity_timeout is not None and affinity_timeout <= 0:
            raise ValueError(f"affinity timeout must be > 0 seconds, got {affinity_timeout}")
        new = tuple(dict.fromkeys(targets))  # drop duplicates, keep order
        # Continue the rotation after the target that was picked last, if it is still there,
        # so that an endpoint update does not send the next connections to the first target.
        last = self._targets[(self._next - 1) % len(self._targets)] if self._targets else None
        self._next = (new.index(last) + 1) % len(new) if last in new else 0
        self._targets = new
        present = set(new)
        self._health = {t: h for t, h in self._health.items() if t in present}
        if affinity_timeout is None:
            self._affinity.clear()
        else:
            self._affinity = {c: a for c, a in self._affinity.items() if a.target in present}
        self._affinity_timeout = affinity_timeout

    def pick(self, client_ip: str, exclude: Collection[Target] = ()) -> Target | None:
        if not self._targets:
            return None
        now = self._clock.monotonic()
        if self._affinity_timeout is not None:
            self._sweep_affinity(now)
            sticky = self._affinity.get(client_ip)
            if (
                sticky is not None
                and now - sticky.last_used <= self._affinity_timeout
                and sticky.target not in exclude
                and not self._skipped(sticky.target, now)
            ):
                sticky.last_used = now
                return sticky.target
        target = self._round_robin(now, exclude)
        if target is not None and self._affinity_timeout is not None:
            self._affinity[client_ip] = _Affinity(target, now)
        return target

    def report_failure(self, target: Target) -> None:
        if target not in self._targets:
            return
        health = self._health.setdefault(target, _Health())
        health.consecutive_failures += 1
        if health.consecutive_failures >= self._failure_threshold:
            health.skipped_until = self._clock.monotonic() + self._failure_cooldown
        # A client stuck to a failing endpoint must be able to move to another one.
        for client, sticky in list(self._affinity.items()):
            if sticky.target == target:
                del self._affinity[client]

    def report_success(self, target: Target) -> None:
        self._health.pop(target, None)

    def is_skipped(self, target: Target) -> bool:
        return self._skipped(target, self._clock.monotonic())

    def _skipped(self, target: Target, now: float) -> bool:
        health = self._health.get(target)
        return health is not None and health.skipped_until > now

    def _round_robin(self, now: float, exclude: Collection[Target]) -> Target | None:
        count = len(self._targets)
        fallback: int | None = None
        for offset in range(count):
            index = (self._next + offset) % count
            target = self._targets[index]
            if target in exclude:
                continue
            if self._skipped(target, now):
                if fallback is None:
                    fallback = index
                continue
            self._next = (index + 1) % count
            return target
        if fallback is None:
            return None
        self._next = (fallback + 1) % count
        return self._targets[fallback]

    def _sweep_affinity(self, now: float) -> None:
        # Expired entries are dropped in one pass per timeout period, so that a stream of
        # distinct clients cannot grow the table without bound.
        assert self._affinity_timeout is not None
        if now < self._next_affinity_sweep:
            return
        self._next_affinity_sweep = now + self._affinity_timeout
        timeout = self._affinity_timeout
        self._affinity = {c: a for c, a in self._affinity.items() if now - a.last_used <= timeout}
