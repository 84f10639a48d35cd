"""The relay's HLS hold: one session's feed and playlist kept alive on a replica while players pull it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from deployments.relay_config import RelayConfig
from helios.media.hlsfeed import HlsFeed


class HlsOwner(Protocol):
    """What a hold uses of its relay (a Protocol, so this module need not import the relay: no cycle)."""

    config: RelayConfig
    _hls: dict[str, "HlsHold"]

    def _acquire(self, session_id: str) -> Any: ...

    def _release(self, feed: Any) -> None: ...


class HlsHold:
    """Keeps one session's feed and HLS playlist alive on this replica while players keep asking for it.

    HLS players are stateless pulls, so the playlist lives until `hls_idle_s` after the last request.
    """

    def __init__(self, relay: HlsOwner, session_id: str):
        self.relay = relay
        self.session_id = session_id
        self.feed = relay._acquire(session_id)
        self.hls: HlsFeed | None = None
        self.error: str | None = None
        self.started = asyncio.Event()
        self.last_access = time.monotonic()
        self.requests = 0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            await self.feed.ready.wait()
            if self.feed.error:
                self.error = self.feed.error
                return
            self.hls = HlsFeed(
                self.feed.fanout, window=self.relay.config.hls_window_segments, part_segments=self.relay.config.hls_part_segments
            )
            self.started.set()
            idle = self.relay.config.hls_idle_s
            while (left := self.last_access + idle - time.monotonic()) > 0:
                await asyncio.sleep(left)  # expiry timer of the stateless players, not a synchronisation
        finally:
            self.started.set()
            self.close()

    def touch(self) -> None:
        self.last_access = time.monotonic()
        self.requests += 1

    def close(self) -> None:
        if self.relay._hls.get(self.session_id) is self:
            del self.relay._hls[self.session_id]
        if self.hls is not None:
            self.hls.close()
        if self.feed is not None:
            self.relay._release(self.feed)
            self.feed = None
        if not self.task.done() and asyncio.current_task() is not self.task:
            self.task.cancel()
