"""HLS players count toward the reader caps like any viewer, although each is a series of short pulls.

A player is (session, client address, User-Agent) on this front-door replica: its first
request opens a reader lease (so `max_viewers_per_session` and the tenant's `max_streams`
refuse one too many with 429), later requests renew it, and it is released once the
player has asked for nothing for `PLAYER_IDLE_S`: by a sweep task that runs while any
player is held, so a player that simply stops gives its slot back even if no other HLS
request ever reaches this replica (the registry also drops every lease of a session when
it ends). A player whose requests land on two replicas holds a lease on each: the count
errs on the side of the caps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from deployments.http.base import ReaderLease

PLAYER_IDLE_S = 30.0
"""A player that asked for nothing this long has gone (hls.js reloads the playlist every part target)."""

PlayerKey = tuple[str, str, str]


class HlsPlayers:
    """The HLS players this replica has seen recently, each holding one reader lease."""

    def __init__(self, idle_s: float = PLAYER_IDLE_S):
        self.idle_s = idle_s
        self._held: dict[PlayerKey, tuple[ReaderLease, float]] = {}
        self._lock = asyncio.Lock()
        self._sweeper: asyncio.Task | None = None

    async def touch(self, key: PlayerKey, open_lease: Callable[[], Awaitable[ReaderLease]]) -> None:
        """Renew `key`'s lease, or open one (ConnectionLimitExceeded when over a cap)."""
        now = time.monotonic()
        self._expire(now)
        held = self._held.get(key)
        if held is not None:
            self._held[key] = (held[0], now)
            return
        async with self._lock:  # a player's first requests (playlist, init) arrive together: one lease
            if key not in self._held:
                self._held[key] = (await open_lease(), now)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Release quiet players' leases on time; ends once none is held (the next touch starts it again)."""
        while self._held:
            due = min(seen for _, seen in self._held.values()) + self.idle_s
            await asyncio.sleep(max(0.05, due - time.monotonic() + 0.05))  # until the oldest player is due
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        for key, (lease, seen) in list(self._held.items()):
            if now - seen > self.idle_s:
                del self._held[key]
                lease.release()

    def __len__(self) -> int:
        return len(self._held)
