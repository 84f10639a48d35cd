"""Time for pacing, injectable so tests drive playback without the wall clock."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Seconds on a monotonic time line, and a way to wait on it that can be interrupted."""

    def now(self) -> float:
        """Current time in seconds (monotonic; only differences matter)."""
        ...

    def sleep_until(self, deadline: float, interrupt: threading.Event) -> bool:
        """Block until `deadline` or until `interrupt` is set; True when the deadline was reached."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic`, waits on the interrupt event so stop is immediate."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float, interrupt: threading.Event) -> bool:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if interrupt.wait(remaining):
                return False


class FakeClock:
    """A clock that only moves when a test calls `advance`; sleepers wake exactly at their deadline.

    Tests synchronise on it instead of sleeping: `next_deadline()` blocks until some thread is
    waiting on the clock and returns its deadline; `advance_to(t)` then releases it.
    """

    _POLL_S = 0.05  # how often a sleeper re-checks its interrupt event (never affects fake time)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._cond = threading.Condition()
        self._sleepers: dict[int, float] = {}
        self._next_token = 0

    def now(self) -> float:
        with self._cond:
            return self._now

    def sleep_until(self, deadline: float, interrupt: threading.Event) -> bool:
        with self._cond:
            if self._now >= deadline:
                return True
            token = self._next_token
            self._next_token += 1
            self._sleepers[token] = deadline
            self._cond.notify_all()
            try:
                while self._now < deadline:
                    if interrupt.is_set():
                        return False
                    self._cond.wait(self._POLL_S)
                return True
            finally:
                del self._sleepers[token]
                self._cond.notify_all()

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError(f"seconds: a clock cannot go back ({seconds})")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()
            return self._now

    def advance_to(self, t: float) -> float:
        """Move time forward to `t` (no-op if already past it)."""
        with self._cond:
            self._now = max(self._now, float(t))
            self._cond.notify_all()
            return self._now

    def sleepers(self) -> list[float]:
        """Deadlines of the threads waiting on this clock right now."""
        with self._cond:
            return sorted(d for d in self._sleepers.values() if d > self._now)

    def next_deadline(self, timeout: float = 10.0) -> float:
        """Wait (real time, up to `timeout`) until a thread sleeps on this clock; return the earliest deadline."""
        with self._cond:
            # A sleeper whose deadline already passed is only on its way out: ignore it.
            def pending() -> list[float]:
                return [d for d in self._sleepers.values() if d > self._now]

            if not self._cond.wait_for(lambda: bool(pending()), timeout):
                raise TimeoutError(f"no thread waited on the fake clock within {timeout} s")
            return min(pending())

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        """Wait (real time) until `predicate()` holds, re-checking whenever a sleeper comes or goes.

        `predicate` may read other objects: it is also re-checked every few milliseconds.
        """
        give_up = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not reached within {timeout} s (fake time {self._now})")
                self._cond.wait(min(remaining, 0.005))

    def has_sleeper(self) -> bool:
        """True when a thread is asleep on this clock waiting for a future time."""
        with self._cond:
            return any(d > self._now for d in self._sleepers.values())

    def step(self, timeout: float = 10.0) -> float:
        """Advance to the earliest sleeper's deadline and return the new time."""
        return self.advance_to(self.next_deadline(timeout))


class UnpacedClock:
    """Benchmark-only: `base`'s time, but every wait returns at once, so nothing is ever paced.

    Used with `pacing: off` (deployments/config.py) to measure serving overhead against the bare
    pipeline: playback releases each chunk the moment it is generated. Interruption still wins
    (a stopped session returns False), so stop and reset behave as with the real clock.
    """

    def __init__(self, base: Clock | None = None) -> None:
        self.base: Clock = base if base is not None else MonotonicClock()

    def now(self) -> float:
        return self.base.now()

    def sleep_until(self, deadline: float, interrupt: threading.Event) -> bool:
        return not interrupt.is_set()
