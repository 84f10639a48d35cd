"""A value fetched at most once per `ttl_s`, shared by every concurrent caller.

/metrics reads the registry and every active session actor; scrapers (several
Prometheus servers, a dashboard, a hostile loop) must not turn into one actor call per
session per scrape. Callers within `ttl_s` of the last fetch get its value, and callers
that arrive while a fetch runs wait for that one instead of starting their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedCache(Generic[T]):
    """The last value of `fetch()`, refreshed when older than `ttl_s` (one fetch at a time)."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self.ttl_s = ttl_s
        self._clock = clock
        self._value: T | None = None
        self._at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        """How many times `fetch` ran (tests and the metrics page itself)."""

    def _fresh(self) -> bool:
        return self._at is not None and self._clock() - self._at < self.ttl_s

    async def get(self) -> T:
        """The cached value, fetching it first when stale; a failed fetch raises and caches nothing."""
        if self._fresh():
            return self._value  # type: ignore[return-value]
        async with self._lock:
            if not self._fresh():  # another caller may have refreshed it while this one waited
                value = await self._fetch()
                self.fetches += 1
                self._value, self._at = value, self._clock()
            return self._value  # type: ignore[return-value]
