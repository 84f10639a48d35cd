"""Fan-out of one session's chunks to many viewers: encode once per format, share the bytes, skip slow viewers forward.

Pure asyncio, no Ray: the relay deployment feeds `SessionFanout.publish` from the session
actor's long poll and serves `SessionFanout.stream` to each viewer. Everything here runs
on one event loop; encoding runs in worker threads so the loop keeps serving viewers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helios.media import framing, mjpeg
from helios.media.formats import FORMATS, parse_format
from helios.media.mp4 import FragmentedMp4Encoder, Mp4Timeline
from helios.media.recording import RecordingWriter

logger = logging.getLogger(__name__)

_SAMPLES = 2048


@dataclass
class FanoutStats:
    """Counters shared by all sessions of one relay replica (what the front door's /metrics shows)."""

    chunks_received: int = 0
    chunks_encoded: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FORMATS})
    encode_ms: dict[str, deque] = field(default_factory=lambda: {f: deque(maxlen=_SAMPLES) for f in FORMATS})
    latency_s: deque = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    latency_count: int = 0
    latency_sum_s: float = 0.0
    ttff_s: deque = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    """Session creation (chunk 0's `session_created_at`) to its first chunk handed to a viewer."""
    ttff_count: int = 0
    chunks_dropped: int = 0
    encode_errors: int = 0
    bytes_out: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FORMATS})
    repeat_encodes: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FORMATS})
    """Encodes of a chunk (chunk index + its `produced_at`) already encoded in that format: 0 when encode-once holds."""
    _encoded_keys: dict[str, OrderedDict] = field(default_factory=lambda: {f: OrderedDict() for f in FORMATS}, repr=False)

    def record_encode(self, fmt: str, key: tuple[int, float]) -> None:
        """Count one encode of the chunk `key` in `fmt`; remembers the last _SAMPLES keys per format."""
        self.chunks_encoded[fmt] += 1
        seen = self._encoded_keys[fmt]
        if key in seen:
            self.repeat_encodes[fmt] += 1
        seen[key] = None
        while len(seen) > _SAMPLES:
            seen.popitem(last=False)

    def record_latency(self, seconds: float) -> None:
        self.latency_s.append(seconds)
        self.latency_count += 1
        self.latency_sum_s += seconds

    def record_ttff(self, seconds: float) -> None:
        self.ttff_s.append(seconds)
        self.ttff_count += 1

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe copy; percentiles over the most recent samples."""
        return {
            "chunks_received": self.chunks_received,
            "chunks_encoded": dict(self.chunks_encoded),
            "encode_ms": {f: _summary(v) for f, v in self.encode_ms.items()},
            "latency_s": {**_summary(self.latency_s), "count": self.latency_count, "sum": self.latency_sum_s},
            "latency_samples_s": list(self.latency_s),
            "ttff_s": {**_summary(self.ttff_s), "count": self.ttff_count},
            "ttff_samples_s": list(self.ttff_s),
            "chunks_dropped": self.chunks_dropped,
            "encode_errors": self.encode_errors,
            "bytes_out": dict(self.bytes_out),
            "repeat_encodes": dict(self.repeat_encodes),
        }


def _summary(samples) -> dict[str, float | int | None]:
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "mean": None}
    arr = np.asarray(samples, dtype=np.float64)
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}


class ChunkEntry:
    """One chunk as the relay holds it: metadata, frames loaded once, and one encoding per format."""

    def __init__(self, chunk: int, meta: dict, load_frames: Callable[[], Awaitable[np.ndarray]]):
        self.chunk = int(chunk)
        self.meta = dict(meta)
        self.produced_at = float(self.meta.get("produced_at") or time.time())
        self._load = load_frames
        self._frames: asyncio.Future | None = None
        self._encoded: dict[str, asyncio.Future] = {}
        self.handed_out = False

    def prefetch(self) -> None:
        """Start loading the frames now (their owner may not live long)."""
        if self._frames is None:
            self._frames = asyncio.ensure_future(self._load())
            self._frames.add_done_callback(_consume_exception)

    async def frames(self) -> np.ndarray:
        self.prefetch()
        if self._frames is None:
            raise RuntimeError("prefetch() did not start fetching this chunk's frames")
        return await asyncio.shield(self._frames)

    async def encoded(self, fmt: str, encoders: "SessionEncoders") -> Any:
        """This chunk in format `fmt`, encoded by the first caller and shared with every other."""
        fut = self._encoded.get(fmt)
        if fut is None:
            fut = asyncio.ensure_future(encoders.encode(fmt, self))
            fut.add_done_callback(_consume_exception)
            self._encoded[fmt] = fut
        return await asyncio.shield(fut)


def _consume_exception(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # marks it retrieved; every awaiter still gets it


class SessionEncoders:
    """The encoders of one session (one H.264 encoder, stateless JPEG and msgpack), each run in a thread."""

    def __init__(self, stats: FanoutStats, *, jpeg_quality: int = 80, mp4_preset: str = "veryfast", mp4_crf: int = 23):
        self.stats = stats
        self.jpeg_quality = jpeg_quality
        self.mp4_preset = mp4_preset
        self.mp4_crf = mp4_crf
        self._mp4: FragmentedMp4Encoder | None = None
        self._locks = {f: asyncio.Lock() for f in FORMATS}

    @property
    def init_segment(self) -> bytes:
        return self.mp4.init_segment

    @property
    def mp4(self) -> FragmentedMp4Encoder:
        """The session's H.264 encoder (exists once the first mp4 chunk was encoded)."""
        if self._mp4 is None:
            raise RuntimeError("mp4 encoder asked for before any mp4 chunk was encoded")
        return self._mp4

    async def encode(self, fmt: str, entry: ChunkEntry) -> Any:
        frames = await entry.frames()
        async with self._locks[fmt]:
            started = time.perf_counter()
            try:
                result = await asyncio.to_thread(self._encode_sync, fmt, frames, entry)
            except Exception:
                self.stats.encode_errors += 1
                raise
            self.stats.encode_ms[fmt].append((time.perf_counter() - started) * 1000.0)
            self.stats.record_encode(fmt, (entry.chunk, entry.produced_at))
            return result

    def _encode_sync(self, fmt: str, frames: np.ndarray, entry: ChunkEntry) -> Any:
        fps = entry.meta.get("fps") or 24
        if fmt == "mp4":
            if self._mp4 is None:
                self._mp4 = FragmentedMp4Encoder(
                    frames.shape[2], frames.shape[1], fps, preset=self.mp4_preset, crf=self.mp4_crf
                )
            return self._mp4.encode_chunk(frames)
        if fmt == "mjpeg":
            return mjpeg.encode_parts(frames, self.jpeg_quality)
        return framing.pack_chunk(
            frames,
            chunk=entry.chunk,
            first_frame=int(entry.meta.get("first_frame", 0)),
            prompt=entry.meta.get("prompt"),
            fps=fps,
            timing=entry.meta.get("timing"),
            produced_at=entry.produced_at,
        )

    def close(self) -> None:
        if self._mp4 is not None:
            self._mp4.close()
            self._mp4 = None


class Viewer:
    """One consumer's bounded queue of chunks; when full, the oldest queued chunk is dropped (skip forward)."""

    def __init__(self, fmt: str, start_chunk: int | None, max_queue: int, stats: FanoutStats, *, recorder: bool = False):
        self.fmt = fmt
        self.recorder = recorder
        self.start_chunk = start_chunk
        self.max_queue = max(1, int(max_queue))
        self.stats = stats
        self.queue: deque[ChunkEntry] = deque()
        self.dropped = 0
        self.delivered = 0
        self.ended = False
        self.end_reason: str | None = None
        self._wake = asyncio.Event()

    def offer(self, entry: ChunkEntry) -> None:
        if self.start_chunk is not None and entry.chunk < self.start_chunk:
            return
        self.queue.append(entry)
        while len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self.stats.chunks_dropped += 1
        self._wake.set()

    def finish(self, reason: str | None) -> None:
        self.ended = True
        self.end_reason = reason
        self._wake.set()

    async def next(self) -> ChunkEntry | None:
        """The next chunk, or None once the session ended and the queue is drained."""
        while not self.queue:
            if self.ended:
                return None
            self._wake.clear()
            await self._wake.wait()
        self.delivered += 1
        return self.queue.popleft()


class _Pacer:
    """Releases frames at `fps` for one viewer; never bursts to catch up more than `max_lag_s`."""

    def __init__(self, fps: float, max_lag_s: float):
        self.period = 1.0 / fps
        self.max_lag_s = max_lag_s
        self.due: float | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.due is None or now - self.due > self.max_lag_s:
            self.due = now
        if self.due > now:
            await asyncio.sleep(self.due - now)
        self.due += self.period


class SessionFanout:
    """All viewers of one session on one relay replica: the recent-chunk window and the viewers' queues."""

    def __init__(
        self,
        session_id: str,
        stats: FanoutStats,
        *,
        window: int = 8,
        viewer_queue: int = 2,
        jpeg_quality: int = 80,
        mp4_preset: str = "veryfast",
        mp4_crf: int = 23,
        pace_mjpeg: bool = True,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if viewer_queue < 1:
            raise ValueError(f"viewer_queue must be >= 1, got {viewer_queue}")
        self.session_id = session_id
        self.stats = stats
        self.window = window
        self.viewer_queue = viewer_queue
        self.pace_mjpeg = pace_mjpeg
        self.encoders = SessionEncoders(stats, jpeg_quality=jpeg_quality, mp4_preset=mp4_preset, mp4_crf=mp4_crf)
        self.entries: dict[int, ChunkEntry] = {}
        self.viewers: set[Viewer] = set()
        self.ended = False
        self.end_reason: str | None = None

    # ---- producer side -------------------------------------------------------------
    @property
    def oldest(self) -> int | None:
        return next(iter(self.entries)) if self.entries else None

    @property
    def latest(self) -> int | None:
        return next(reversed(self.entries)) if self.entries else None

    def publish(self, entry: ChunkEntry) -> bool:
        """Add a newly produced chunk and offer it to every viewer; False for a duplicate or stale chunk."""
        latest = self.latest
        if self.ended or (latest is not None and entry.chunk <= latest):
            return False
        self.stats.chunks_received += 1
        entry.prefetch()
        self.entries[entry.chunk] = entry
        while len(self.entries) > self.window:
            del self.entries[next(iter(self.entries))]
        for viewer in list(self.viewers):
            viewer.offer(entry)
        return True

    def finish(self, reason: str | None) -> None:
        """The session ended: every viewer drains its queue, then its stream ends."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        for viewer in list(self.viewers):
            viewer.finish(reason)

    # ---- consumer side -------------------------------------------------------------
    def subscribe(
        self, fmt: str, from_chunk: int | None = None, *, max_queue: int | None = None, recorder: bool = False
    ) -> Viewer:
        """A new viewer starting at the live edge (the latest chunk) or at `from_chunk` (within the window)."""
        fmt = parse_format(fmt)
        if from_chunk is None:
            prefill = [self.entries[self.latest]] if self.entries else []
            start = prefill[0].chunk if prefill else None
        else:
            if isinstance(from_chunk, bool) or not isinstance(from_chunk, int) or from_chunk < 0:
                raise ValueError(f"from must be a chunk index >= 0, got {from_chunk!r}")
            oldest = self.oldest
            if oldest is not None and from_chunk < oldest:
                raise ValueError(
                    f"from={from_chunk} is no longer kept: chunks {oldest}..{self.latest} can be replayed"
                )
            prefill = [e for e in self.entries.values() if e.chunk >= from_chunk]
            start = from_chunk
        bound = max_queue if max_queue is not None else self.viewer_queue + len(prefill)
        viewer = Viewer(fmt, start, bound, self.stats, recorder=recorder)
        for entry in prefill:
            viewer.offer(entry)
        if self.ended:
            viewer.finish(self.end_reason)
        self.viewers.add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def viewer_counts(self) -> dict[str, int]:
        counts = {f: 0 for f in FORMATS}
        for viewer in self.viewers:
            if not viewer.recorder:
                counts[viewer.fmt] += 1
        return counts

    def _handed_out(self, entry: ChunkEntry, fmt: str, nbytes: int) -> None:
        self.stats.bytes_out[fmt] += nbytes
        if not entry.handed_out:
            entry.handed_out = True
            now = time.time()
            self.stats.record_latency(max(0.0, now - entry.produced_at))
            created = entry.meta.get("session_created_at")
            if entry.chunk == 0 and created is not None:  # the session's first frame reaches a viewer
                self.stats.record_ttff(max(0.0, now - float(created)))

    def chunks(self, viewer: Viewer, fmt: str) -> AsyncIterator[tuple[ChunkEntry, Any]]:
        """Each chunk queued for `viewer` with its shared `fmt` encoding (for consumers outside this module)."""
        return self._encoded(viewer, fmt)

    async def _encoded(self, viewer: Viewer, fmt: str) -> AsyncIterator[tuple[ChunkEntry, Any]]:
        """Each chunk queued for `viewer` with its `fmt` encoding, until the session ends.

        A chunk whose encode fails is logged and skipped: one bad chunk must not end a stream or the recording.
        """
        while (entry := await viewer.next()) is not None:
            try:
                payload = await entry.encoded(fmt, self.encoders)
            except Exception as exc:  # noqa: BLE001
                logger.warning("session %s chunk %d: %s encode failed, skipped: %s", self.session_id, entry.chunk, fmt, exc)
                continue
            yield entry, payload

    async def stream(self, viewer: Viewer) -> AsyncIterator[bytes]:
        """The bytes of `viewer`'s stream until the session ends (then the format's closing bytes)."""
        fmt = viewer.fmt
        timeline = Mp4Timeline() if fmt == "mp4" else None
        pacer: _Pacer | None = None
        sent_init = False
        try:
            async for entry, payload in self._encoded(viewer, fmt):
                if fmt == "mp4":
                    if timeline is None:
                        raise RuntimeError("an mp4 viewer has no timeline to render its fragments on")
                    data = timeline.render(payload, produced_at=entry.produced_at)
                    if not sent_init:
                        data = self.encoders.init_segment + data
                        sent_init = True
                    self._handed_out(entry, fmt, len(data))
                    yield data
                elif fmt == "msgpack":
                    self._handed_out(entry, fmt, len(payload))
                    yield payload
                else:
                    if self.pace_mjpeg and pacer is None:
                        fps = float(entry.meta.get("fps") or 24)
                        pacer = _Pacer(fps, max_lag_s=len(payload) / fps)
                    for i, part in enumerate(payload):
                        if pacer is not None:
                            await pacer.wait()
                        if i == 0:
                            self._handed_out(entry, fmt, 0)
                        self.stats.bytes_out[fmt] += len(part)
                        yield part
            if fmt == "msgpack":
                yield framing.pack_end(viewer.end_reason)
            elif fmt == "mjpeg":
                yield mjpeg.closing_boundary()
        finally:
            self.unsubscribe(viewer)

    def record(self, writer: RecordingWriter) -> asyncio.Task:
        """Start appending every chunk, from the oldest kept one on, to `writer` until the session ends (never drops).

        Subscribes at once (so no chunk published after this call is missed) and returns the writing task.
        """
        viewer = self.subscribe("mp4", self.oldest, max_queue=1 << 30, recorder=True)
        return asyncio.ensure_future(self._record(viewer, writer))

    async def _record(self, viewer: Viewer, writer: RecordingWriter) -> None:
        try:
            async for _, chunk in self._encoded(viewer, "mp4"):
                await asyncio.to_thread(writer.append, self.encoders.init_segment, chunk)
        finally:
            self.unsubscribe(viewer)
            await asyncio.to_thread(writer.close)

    def close(self) -> None:
        self.encoders.close()
