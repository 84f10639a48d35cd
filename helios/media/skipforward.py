"""Consumer-side skip-forward: a bounded buffer between a fast stream source and a slow client.

Ray Serve streams have no backpressure: the relay's generator runs at the session's pace
and a consumer that stops reading (a slow HTTP client) lets items pile up on its side.
`SkipForward` reads the source eagerly and keeps at most `max_buffered` pieces; beyond,
it drops the oldest. Relay pieces are whole chunks (msgpack: one chunk map; mp4: one
chunk's fragments) or single frames (mjpeg), so a drop skips the viewer forward cleanly.
For mp4, the decode times of later pieces move back by what was dropped, so the viewer's
timeline stays gap-free. The first piece (mp4: it holds the init segment) and the last
(msgpack: the end map) are never dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from helios.media import mp4box
from helios.media.formats import parse_format


class SkipForward:
    """Wrap `source` (an async iterator of bytes) for a consumer that may be slower than it."""

    def __init__(self, source: AsyncIterator[bytes], fmt: str, max_buffered: int = 8):
        self._task: asyncio.Task | None = None  # first: __del__ runs even when a check below raises
        self.fmt = parse_format(fmt)
        if max_buffered < 2:
            raise ValueError(f"max_buffered must be >= 2, got {max_buffered}")
        self.max_buffered = max_buffered
        self.received = 0
        self.dropped = 0
        self.finished = False
        self._source = source
        self._buffered: deque[bytes] = deque()
        self._error: BaseException | None = None
        self._first_out = False
        self._shift = 0  # mp4 ticks dropped so far
        self._changed = asyncio.Event()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            async for piece in self._source:
                self.received += 1
                self._buffered.append(piece)
                while len(self._buffered) > self.max_buffered:
                    index = 0 if self._first_out else 1
                    dropped = self._buffered[index]
                    del self._buffered[index]
                    self.dropped += 1
                    if self.fmt == "mp4":
                        self._shift += mp4box.shift_decode_times(dropped, 0)[1]
                self._changed.set()
        except Exception as exc:  # noqa: BLE001 - re-raised to the consumer after the buffered pieces
            self._error = exc
        finally:
            self.finished = True
            self._changed.set()

    async def wait_finished(self) -> None:
        """Until the source is exhausted (every piece received or dropped)."""
        self._start()
        while not self.finished:
            self._changed.clear()
            await self._changed.wait()

    def __aiter__(self) -> "SkipForward":
        return self

    async def __anext__(self) -> bytes:
        self._start()
        while not self._buffered:
            if self.finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        piece = self._buffered.popleft()
        self._first_out = True
        if self.fmt == "mp4" and self._shift:
            piece = mp4box.shift_decode_times(piece, self._shift)[0]
        return piece

    async def aclose(self) -> None:
        """Stop reading the source (call it when the client goes away: the source is endless)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            # Let the cancellation reach the source first: closing a generator that is still
            # suspended inside the pump raises "asynchronous generator is already running".
            await asyncio.wait([self._task])
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()  # a no-op on a generator the cancellation already finished

    def __del__(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def skip_forward(source: AsyncIterator[bytes], fmt: str, max_buffered: int = 8) -> SkipForward:
    """`SkipForward(source, fmt, max_buffered)`: iterate it instead of `source`."""
    return SkipForward(source, fmt, max_buffered)
