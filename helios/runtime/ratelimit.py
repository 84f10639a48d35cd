"""A token bucket: the per-session command rate limit (DESIGN section 10).

Pure and thread-safe, with an injectable clock, so the serving layer can keep one bucket
per session and tests drive time by hand. Refusing is cheap and says when to retry
(`retry_after_s`), which the HTTP layer turns into 429 + Retry-After and the WebSocket
into an `error` message.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from helios.runtime.clock import Clock, MonotonicClock


class RateLimitSpec(BaseModel):
    """Configuration of one bucket: a sustained rate and the burst it may save up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float = Field(20.0, gt=0, le=1e6, description="Commands per second sustained.")
    burst: int = Field(40, ge=1, le=1_000_000, description="Commands accepted back to back after an idle spell.")


class RateLimited(Exception):
    """Over the rate: `retry_after_s` says when one more command would be accepted."""

    def __init__(self, limit: str, retry_after_s: float, rate_per_s: float, burst: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.rate_per_s = rate_per_s
        self.burst = burst
        super().__init__(
            f"{limit}: over {rate_per_s:g} commands/s (burst {burst}); retry after {retry_after_s:.3f} s"
        )


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; each accepted command takes one.

    `try_acquire()` never blocks: it answers True (taken) or False, and `retry_after_s()`
    tells how long until a token is there. `acquire()` raises `RateLimited` instead of False.
    """

    def __init__(
        self,
        rate_per_s: float = 20.0,
        burst: int = 40,
        *,
        clock: Clock | Callable[[], float] | None = None,
        limit: str = "command_rate",
    ) -> None:
        spec = RateLimitSpec(rate_per_s=rate_per_s, burst=burst)  # validates both
        self.rate_per_s = spec.rate_per_s
        self.burst = spec.burst
        self.limit = limit
        self._now = _now_function(clock)
        self._lock = threading.Lock()
        self._tokens = float(spec.burst)
        self._stamp = self._now()

    @classmethod
    def from_spec(cls, spec: RateLimitSpec, *, clock: Clock | Callable[[], float] | None = None, limit: str = "command_rate") -> "TokenBucket":
        return cls(spec.rate_per_s, spec.burst, clock=clock, limit=limit)

    def _refill(self) -> float:
        now = self._now()
        elapsed = now - self._stamp
        if elapsed > 0:  # a clock that does not move (or steps back) adds nothing
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
            self._stamp = now
        return self._tokens

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take `tokens` if they are there; False (and nothing taken) if not."""
        return self._take(tokens) == 0.0

    def acquire(self, tokens: int = 1) -> None:
        """Take `tokens` or raise `RateLimited` naming the limit and the wait."""
        wait = self._take(tokens)
        if wait > 0.0:
            raise RateLimited(self.limit, wait, self.rate_per_s, self.burst)

    def _take(self, tokens: int) -> float:
        """0.0 when `tokens` were taken, else the wait until they would be (nothing taken)."""
        if tokens < 1 or tokens > self.burst:
            raise ValueError(f"tokens: must be 1..{self.burst}, got {tokens}")
        with self._lock:
            self._refill()
            wait = self._wait_locked(tokens)
            if wait == 0.0:
                self._tokens = max(0.0, self._tokens - tokens)
            return wait

    def retry_after_s(self, tokens: int = 1) -> float:
        """Seconds until `tokens` are available (0.0 when they are now)."""
        with self._lock:
            self._refill()
            return self._wait_locked(tokens)

    def retry_after_header(self, tokens: int = 1) -> int:
        """`retry_after_s` as the whole seconds an HTTP Retry-After header carries (at least 1)."""
        return max(1, math.ceil(self.retry_after_s(tokens)))

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        with self._lock:
            return self._refill()

    def _wait_locked(self, tokens: int) -> float:
        missing = tokens - self._tokens
        return 0.0 if missing <= 1e-9 else missing / self.rate_per_s


def _now_function(clock: Clock | Callable[[], float] | None) -> Callable[[], float]:
    if clock is None:
        return MonotonicClock().now
    if isinstance(clock, Clock):
        return clock.now
    if callable(clock):
        return clock
    raise ValueError(f"clock: expected a Clock or a callable returning seconds, got {type(clock).__name__}")
