"""Relay deployment: pulls a session's chunks from its actor and streams them to any number of viewers.

Any replica can serve any session: it finds the session actor by name and long-polls its
`wait_chunks`. Per replica there is one feed task per session, shared by all of that
replica's viewers and its recording; each chunk is fetched once and encoded once per
format (helios.media.fanout), and slow viewers are skipped forward by whole chunks.

The front door calls `stream` with `handle.options(stream=True)` and wraps the
generator in a StreamingResponse with `media_type(fmt)`. Ray Serve streams have no
backpressure: a consumer that stops reading lets items pile up on its side; wrap the
generator in `skip_forward` (below) to keep that bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.lookup import get_actor
from deployments.naming import RELAY_DEPLOYMENT, session_actor_name
from deployments.protocol import (
    BadDirective,
    ChunkBatch,
    HlsReply,
    HlsRequest,
    InvalidField,
    PlaylistNotReady,
    RecordingInfo,
    SegmentNotFound,
    SessionNotFound,
    StreamEnded,
)
from deployments.relay_config import RelayConfig, check_format, check_from, check_session_id
from deployments.relay_hls import HlsHold
from helios.media.fanout import ChunkEntry, FanoutStats, SessionFanout
from helios.media.formats import media_type
from helios.media.hls import PLAYLIST_MEDIA_TYPE, SEGMENT_MEDIA_TYPE, DirectiveError, HlsTrack
from helios.media.recording import RecordingStore, RecordingWriter
from helios.media.storage import RecordingStorage
from helios.media.skipforward import SkipForward, skip_forward

logger = logging.getLogger(__name__)

MAX_RECORDINGS_TRACKED = 1024
"""Finished recordings whose state (chunks, complete) a replica remembers for recording_info."""

RECORDING_SWEEP_S = 60.0
"""How often a replica deletes expired recordings nobody scheduled (those of a restarted replica)."""

TOUCH_PERIOD_S = 5.0
"""How often a feed with viewers calls the session actor's touch() (keeps its idle timeout away)."""

__all__ = ["Relay", "RelayConfig", "SkipForward", "media_type", "skip_forward"]


async def _load_ref(ref: ray.ObjectRef) -> np.ndarray:
    frames = await ref
    return np.asarray(frames, dtype=np.uint8)


async def _lookup_actor(name: str, namespace: str, attempts: int = 4) -> Any:
    """The named actor, or None when it does not exist (a lookup can fail transiently under load: retried)."""
    for attempt in range(attempts):
        handle = await get_actor(name, namespace)
        if handle is not None:
            return handle
        if attempt + 1 < attempts:
            await asyncio.sleep(0.25 * 2**attempt)  # backoff between GCS lookups
    return None


class _Feed:
    """One session's long poll on one replica, feeding its SessionFanout."""

    def __init__(self, session_id: str, fanout: SessionFanout, config: RelayConfig):
        self.session_id = session_id
        self.fanout = fanout
        self.config = config
        self.users = 0
        self.ready = asyncio.Event()
        self.error: str | None = None
        """Why the feed has no session (then every viewer gets SessionNotFound with it)."""
        self._touched = float("-inf")
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        actor = await _lookup_actor(session_actor_name(self.session_id), self.config.namespace)
        if actor is None:
            self.error = f"session_id {self.session_id!r}: session not found"
            self.fanout.finish("session not found")
            self.ready.set()
            return
        after, timeout = -1, 0.0  # the first poll answers at once with the session's whole ring
        try:
            while True:
                reply: ChunkBatch = await actor.wait_chunks.remote(after, timeout)
                for item in reply.chunks:
                    ref = item.refs[0]
                    meta = item.meta
                    if "timing" in meta:  # chunk 0: its time to first frame, broken down
                        meta = {**meta, "timing": {**meta["timing"], "relay_got_at": time.time()}}
                    entry = ChunkEntry(item.chunk, meta, lambda ref=ref: _load_ref(ref))
                    self.fanout.publish(entry)
                    after = max(after, entry.chunk)
                self.ready.set()
                self._touch(actor)
                if reply.ended:
                    self.fanout.finish(reply.end_reason)
                    return
                timeout = self.config.poll_timeout_s
        except asyncio.CancelledError:
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
            logger.info("session %s: actor gone (%s)", self.session_id, type(exc).__name__)
            self.fanout.finish("session actor gone")
        except Exception as exc:  # noqa: BLE001 - end the viewers' streams with the cause
            logger.exception("session %s: relay feed failed", self.session_id)
            self.fanout.finish(f"relay error: {exc}")
        finally:
            self.ready.set()

    def _touch(self, actor: Any) -> None:
        """Tell the session a viewer is watching (a recording alone is not one), at most every TOUCH_PERIOD_S."""
        now = time.monotonic()
        if now - self._touched < TOUCH_PERIOD_S or not any(not v.recorder for v in self.fanout.viewers):
            return
        self._touched = now
        try:
            actor.touch.remote()  # fire and forget
        except AttributeError:  # a session actor without touch()
            pass

    def close(self) -> None:
        self.task.cancel()
        self.fanout.close()


@serve.deployment(name=RELAY_DEPLOYMENT, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
class Relay:
    """Streams sessions to viewers (mjpeg | mp4 | msgpack) and writes their recordings."""

    def __init__(self, config: RelayConfig | dict | None = None, **options: Any):
        if isinstance(config, RelayConfig):
            config = config.model_dump()
        self.config = RelayConfig.model_validate({**(config or {}), **options})
        self._stats = FanoutStats()
        self._feeds: dict[str, _Feed] = {}
        self._recordings: dict[str, asyncio.Task] = {}
        self._writers: dict[str, RecordingWriter] = {}
        self._recording_lock = asyncio.Lock()
        self._hls: dict[str, HlsHold] = {}
        self._storage = RecordingStorage(self.config.recording_uri)
        self._store = RecordingStore(self._storage, self.config.recording_retention_s)
        self._sweeper: asyncio.Task | None = None

    # ---- feeds -----------------------------------------------------------------------
    def _acquire(self, session_id: str) -> _Feed:
        feed = self._feeds.get(session_id)
        if feed is None:
            fanout = SessionFanout(
                session_id,
                self._stats,
                window=self.config.window_chunks,
                viewer_queue=self.config.viewer_queue_chunks,
                jpeg_quality=self.config.jpeg_quality,
                mp4_preset=self.config.mp4_preset,
                mp4_crf=self.config.mp4_crf,
                pace_mjpeg=self.config.pace_mjpeg,
            )
            feed = _Feed(session_id, fanout, self.config)
            self._feeds[session_id] = feed
        feed.users += 1
        return feed

    def _release(self, feed: _Feed) -> None:
        feed.users -= 1
        if feed.users <= 0 and self._feeds.get(feed.session_id) is feed:
            del self._feeds[feed.session_id]
            feed.close()

    # ---- public API --------------------------------------------------------------------
    async def stream(self, session_id: str, fmt: str = "mp4", from_chunk: int | None = None) -> AsyncIterator[bytes]:
        """The session's stream in `fmt`, from the live edge or `from_chunk`, until the session ends."""
        fmt = check_format(fmt)
        check_session_id(session_id)
        from_chunk = check_from(from_chunk)
        feed = self._acquire(session_id)
        pieces = None
        try:
            await feed.ready.wait()
            if feed.error:
                raise SessionNotFound(feed.error)
            try:
                viewer = feed.fanout.subscribe(fmt, from_chunk)
            except ValueError as exc:  # `from` older than the window the relay keeps
                raise InvalidField(str(exc), field="from") from None
            pieces = feed.fanout.stream(viewer)
            async for piece in pieces:
                yield piece
        finally:
            if pieces is not None:
                await pieces.aclose()  # unsubscribes now, not whenever the generator is collected
            self._release(feed)

    async def hls(self, session_id: str, req: HlsRequest) -> HlsReply:
        """One LL-HLS resource of the session: its media playlist (blocking reload), init segment, a segment or a part."""
        check_session_id(session_id)
        hold = self._hls.get(session_id)
        if hold is None:
            hold = self._hls[session_id] = HlsHold(self, session_id)
        hold.touch()
        await hold.started.wait()
        if hold.error or hold.hls is None:
            raise SessionNotFound(hold.error or f"session_id {session_id!r}: session not found")
        feed = hold.hls
        if feed.track is None:
            try:
                await asyncio.wait_for(feed.ready.wait(), self.config.hls_first_segment_wait_s)
            except TimeoutError:
                raise PlaylistNotReady(
                    f"hls: session {session_id} has no chunk yet (not started?); retry", retry_after_s=1.0, field="hls"
                ) from None
            if feed.track is None:
                raise StreamEnded("session_id: session ended before its first chunk")
        track = feed.track
        try:
            if req.resource == "playlist":
                return await self._hls_playlist(track, req)
            if req.resource == "init":
                return HlsReply(track.init_segment, SEGMENT_MEDIA_TYPE)
            return await self._hls_media(track, req)
        except DirectiveError as exc:
            raise BadDirective(str(exc), field=exc.field) from None

    async def _hls_playlist(self, track: HlsTrack, req: HlsRequest) -> HlsReply:
        timeout = track.hold_timeout_s()
        if not await track.wait(req.msn, req.part, timeout):
            where = f"segment {req.msn}" + ("" if req.part is None else f" part {req.part}")
            raise PlaylistNotReady(
                f"_HLS_msn: {where} did not appear within {timeout:.0f}s (three target durations)",
                retry_after_s=float(track.target_duration),
            )
        return HlsReply(track.playlist(req.query).encode(), PLAYLIST_MEDIA_TYPE)

    async def _hls_media(self, track: HlsTrack, req: HlsRequest) -> HlsReply:
        msn = int(req.msn if req.msn is not None else -1)
        name = f"{msn}.m4s" if req.resource == "segment" else f"{msn}.{req.part}.m4s"
        last = track.last_msn
        if last is not None and last < msn <= last + 1 and not track.ended:  # a preload hint: wait for it
            await track.wait(msn, None, track.hold_timeout_s())
        if req.resource == "segment":
            seg = track.segment(msn)
            body = seg.data if seg is not None else None
        else:
            part = track.part(msn, int(req.part or 0))
            body = part.data if part is not None else None
        if body is None:
            raise SegmentNotFound(
                f"segment: {name} is not in the playlist (segments {track.first_msn}..{track.last_msn}, gaps excluded)"
            )
        return HlsReply(body, SEGMENT_MEDIA_TYPE)

    async def start_recording(self, session_id: str) -> str:
        """Start writing the session's recording.mp4 (from the oldest chunk still kept); returns its URL.

        Idempotent, and never overwrites: when the file already exists (an earlier call, or
        another replica), it is left alone and its URL returned.
        """
        check_session_id(session_id)
        url = self._storage.url(session_id)
        self._ensure_sweeper()
        async with self._recording_lock:
            if session_id in self._writers or await asyncio.to_thread(self._storage.exists, session_id):
                return url
            feed = self._acquire(session_id)
            await feed.ready.wait()
            if feed.error:
                self._release(feed)
                raise SessionNotFound(feed.error)
            try:
                file = await asyncio.to_thread(self._storage.create, session_id)
            except OSError:
                self._release(feed)
                raise
            writer = RecordingWriter(url, file)
            self._writers[session_id] = writer
            while len(self._writers) > MAX_RECORDINGS_TRACKED:  # forget the oldest finished ones
                oldest = next((sid for sid, w in self._writers.items() if w.closed), None)
                if oldest is None:
                    break
                del self._writers[oldest]
        task = feed.fanout.record(writer)
        self._recordings[session_id] = task

        def done(_: asyncio.Task) -> None:
            self._recordings.pop(session_id, None)
            self._store.finished(session_id)  # the session ended: its retention starts now
            self._release(feed)

        task.add_done_callback(done)
        return url

    async def recording_path(self, session_id: str) -> str | None:
        """URL of the session's recording if it exists (at `recording_uri`, seen from this replica), else None."""
        check_session_id(session_id)
        return self._storage.url(session_id) if await asyncio.to_thread(self._storage.exists, session_id) else None

    async def recording_info(self, session_id: str) -> RecordingInfo:
        """Where the recording is, whether this replica is writing it, and how far it got."""
        check_session_id(session_id)
        writer = self._writers.get(session_id)
        return RecordingInfo(
            path=self._storage.url(session_id),
            exists=await asyncio.to_thread(self._storage.exists, session_id),
            recording=writer is not None and not writer.closed,
            chunks=writer.chunks if writer else None,
            complete=writer.closed if writer else None,
        )

    async def wait_recording(self, session_id: str, timeout_s: float = 30.0) -> RecordingInfo:
        """Wait (at most `timeout_s`) until this replica's recording of the session is complete; its recording_info."""
        check_session_id(session_id)
        task = self._recordings.get(session_id)
        if task is not None:
            await asyncio.wait([task], timeout=max(0.0, float(timeout_s)))
        return await self.recording_info(session_id)

    def stats(self) -> dict:
        """Counters of this replica: viewers per session and format, encodes, encode ms, latency to first byte."""
        sessions = {
            sid: {
                "viewers": feed.fanout.viewer_counts(),
                "oldest": feed.fanout.oldest,
                "latest": feed.fanout.latest,
                "ended": feed.fanout.ended,
                "recording": sid in self._recordings,
            }
            for sid, feed in self._feeds.items()
        }
        hls = {
            sid: {
                "requests": hold.requests,
                "first_msn": hold.hls.track.first_msn if hold.hls and hold.hls.track else None,
                "last_msn": hold.hls.track.last_msn if hold.hls and hold.hls.track else None,
            }
            for sid, hold in self._hls.items()
        }
        return {"sessions": sessions, "hls": hls, **self._stats.snapshot()}

    def state_counts(self) -> dict[str, int]:
        """Per-session state this replica holds now: 0 everywhere once no session is watched or recorded
        (the soak and tests/serve/test_soak.py check it; finished writers are a bounded memo, not counted)."""
        return {
            "feeds": len(self._feeds),
            "hls": len(self._hls),
            "recordings": len(self._recordings),
            "open_writers": sum(1 for w in self._writers.values() if not w.closed),
            "viewers": sum(len(f.fanout.viewers) for f in self._feeds.values()),
        }

    def memory_report(self, trim: bool = False, objects: bool = False, trace: bool = False) -> dict:
        """What this replica holds (helios.runtime.memdebug; docs/soak.md)."""
        from helios.runtime.memdebug import memory_report

        from deployments.detached import loaded_actor_classes

        return {**memory_report(trim, objects, trace), "state": self.state_counts(), "writers_kept": len(self._writers),
                "actor_classes": loaded_actor_classes()}

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        """Delete expired recordings this replica did not schedule (written before a restart)."""
        while True:
            try:
                for sid in await asyncio.to_thread(self._store.expired, set(self._recordings)):
                    if await get_actor(session_actor_name(sid), self.config.namespace) is None:  # its session is gone
                        await asyncio.to_thread(self._store.delete, sid)
            except OSError as exc:  # the folder is unreadable now: try again next period
                logger.warning("recording sweep of %r failed: %s", self._storage, exc)
            await asyncio.sleep(RECORDING_SWEEP_S)

    def __del__(self) -> None:  # Serve calls it on replica shutdown
        for hold in list(getattr(self, "_hls", {}).values()):
            hold.task.cancel()
        if getattr(self, "_sweeper", None) is not None:
            self._sweeper.cancel()
        if getattr(self, "_store", None) is not None:
            self._store.close()
        for task in getattr(self, "_recordings", {}).values():
            task.cancel()
        for feed in list(getattr(self, "_feeds", {}).values()):
            feed.close()
