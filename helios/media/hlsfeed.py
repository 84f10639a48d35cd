"""Feeds a session's `HlsTrack` from its fan-out: every chunk's shared mp4 encoding becomes one segment.

The feed is one more consumer of the session's mp4 encodings (like the recording), not a
viewer: it asks for the same per-chunk encode future as every mp4 viewer, so HLS adds no
encode. Its queue is bounded by the playlist window; a chunk it misses becomes a gap.
"""

from __future__ import annotations

import asyncio
import logging

from helios.media.fanout import SessionFanout
from helios.media.hls import HlsTrack, render_parts

logger = logging.getLogger(__name__)


class HlsFeed:
    """The HLS playlist of one session on one replica, fed until the session ends or `close()`."""

    def __init__(self, fanout: SessionFanout, *, window: int = 6, part_segments: int = 3):
        self.fanout = fanout
        self.window = window
        self.part_segments = part_segments
        self.track: HlsTrack | None = None
        self.ready = asyncio.Event()
        """Set once the track exists (the first segment is in) or the session ended without one."""
        self._viewer = fanout.subscribe("mp4", fanout.oldest, max_queue=window, recorder=True)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        viewer = self._viewer
        try:
            async for entry, chunk in self.fanout.chunks(viewer, "mp4"):
                enc = self.fanout.encoders.mp4
                if self.track is None:
                    self.track = HlsTrack(
                        self.fanout.encoders.init_segment,
                        part_target_s=enc.gop_frames / float(enc.fps),
                        window=self.window,
                        part_segments=self.part_segments,
                    )
                base = enc.ticks_for(int(entry.meta["first_frame"]))
                parts = render_parts(chunk, base, enc.timescale, entry.chunk)
                self.track.add(entry.chunk, parts, chunk.duration / enc.timescale, entry.produced_at)
                self.ready.set()
        finally:
            self.fanout.unsubscribe(viewer)
            if self.track is not None:
                self.track.end(viewer.end_reason or self.fanout.end_reason)
            self.ready.set()

    @property
    def ended(self) -> bool:
        return self.task.done()

    def close(self) -> None:
        self.task.cancel()
