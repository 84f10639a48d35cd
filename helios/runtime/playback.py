"""Real-time pacing: release generated frames at the stream's fps and hold the generator back.

The generator pushes whole chunks; a release thread hands frames to the sink one per
1/fps ("frame") or a whole chunk when its first frame is due ("chunk", for relays that
fan out chunks). `push` blocks while more than `lookahead` chunks are waiting or playing,
so the generator never runs further ahead of what viewers see. When the generator is
slower than real time the schedule restarts at the next available frame (a stall, never
a burst), and the measured rate is reported as `effective_fps`.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from helios.runtime.clock import Clock

log = logging.getLogger(__name__)

ReleaseMode = Literal["frame", "chunk"]
LATE_TOLERANCE = 0.5
"""A frame released later than this many periods restarts the schedule (so no two frames
are ever released less than half a period apart); less lateness is caught up."""
FPS_WINDOW_S = 3.0
"""Releases older than this do not count towards `effective_fps`."""


@dataclass
class _Chunk:
    frames: np.ndarray
    info: dict[str, Any]
    pos: int = 0


class Playback:
    """The paced queue between a generation loop and a sink's `on_frames`."""

    def __init__(
        self,
        deliver: Callable[[np.ndarray, dict[str, Any]], None],
        *,
        clock: Clock,
        fps: float,
        lookahead: int = 1,
        release: ReleaseMode = "frame",
        name: str = "playback",
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps: must be > 0, got {fps}")
        if lookahead < 0:
            raise ValueError(f"lookahead: must be >= 0, got {lookahead}")
        if release not in ("frame", "chunk"):
            raise ValueError(f"release: must be 'frame' or 'chunk', got {release!r}")
        self._deliver = deliver
        self._on_error = on_error
        self._clock = clock
        self.fps = float(fps)
        self.lookahead = lookahead
        self.release = release
        self._cond = threading.Condition()
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._abort = threading.Event()
        self._finishing = False
        self._base: float | None = None  # time of frame 0 of the current schedule
        self._k = 0  # frames released since _base
        self._released = 0  # frames released in total
        self._chunks_done = 0  # chunks fully released in total
        self._history: collections.deque[tuple[float, int]] = collections.deque()  # (release time, frames)
        self._first_release: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-release", daemon=True)

    # --- generator side ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def push(self, frames: np.ndarray, info: dict[str, Any]) -> None:
        """Queue a chunk, then wait until at most `lookahead` chunks are waiting or playing."""
        with self._cond:
            if self._abort.is_set() or self._finishing:
                return
            self._queue.append(_Chunk(frames, dict(info)))
            self._cond.notify_all()
            self._cond.wait_for(lambda: len(self._queue) <= self.lookahead or self._abort.is_set())

    def finish(self, *, drain: bool, timeout: float | None = None) -> None:
        """End playback: release what is queued at pace (`drain`) or drop it, then join the thread."""
        with self._cond:
            self._finishing = True
            if not drain:
                self._abort.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def abort(self) -> None:
        """Drop everything queued and wake every waiter now (session stop)."""
        with self._cond:
            self._abort.set()
            self._cond.notify_all()

    # --- observers ---------------------------------------------------------------------------
    @property
    def frames_released(self) -> int:
        with self._cond:
            return self._released

    @property
    def chunks_released(self) -> int:
        """Chunks whose every frame has been released."""
        with self._cond:
            return self._chunks_done

    @property
    def pending_chunks(self) -> int:
        """Chunks queued or partly released."""
        with self._cond:
            return len(self._queue)

    def next_needed_at(self) -> float | None:
        """When playback runs out of frames: the due time of the first frame after everything queued.

        None before playback ever began (nothing waits). May be in the past: playback is
        starved (or paused) and the next chunk is needed now. A queued chunk whose first frame
        is overdue restarts the schedule when released, so it counts from now.
        """
        with self._cond:
            remaining = sum(len(c.frames) - c.pos for c in self._queue)
            if self._base is None and not remaining:
                return None
            now = self._clock.now()
            due = now if self._base is None else self._base + self._k / self.fps
            if remaining and due < now:
                due = now
            return due + remaining / self.fps

    def effective_fps(self) -> float:
        """Frames per second actually shown over the last few seconds (0.0 when none were).

        Each released block counts as on screen for n/fps seconds from its release; the rate
        is the screen time covered in the window times fps, over the window. Steady playback
        reads exactly fps in both release modes; stalls lower it at once.
        """
        with self._cond:
            if self._first_release is None:
                return 0.0
            now = self._clock.now()
            start = max(now - FPS_WINDOW_S, self._first_release)
            if now <= start:
                return 0.0
            shown = sum(max(0.0, min(t + n / self.fps, now) - max(t, start)) for t, n in self._history)
            return round(shown * self.fps / (now - start), 2)

    # --- release thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._release_one():
                pass
        except Exception as exc:  # noqa: BLE001 - a broken sink must not hang the generator
            log.exception("frame release failed; dropping the rest of the stream")
            self.abort()
            if self._on_error is not None:
                self._on_error(exc)

    def _release_one(self) -> bool:
        period = 1.0 / self.fps
        with self._cond:
            starved = not self._queue
            self._cond.wait_for(lambda: self._queue or self._abort.is_set() or self._finishing)
            if self._abort.is_set() or not self._queue:
                return False
            now = self._clock.now()
            due = None if self._base is None else self._base + self._k * period
            head = self._queue[0]
            late = due is None or now > due + (0.0 if starved else LATE_TOLERANCE * period)
            if head.pos < len(head.frames) and late:
                # Nothing was ready when a frame was due (generator slower than real time, or
                # the start), or the release thread woke far too late: restart the schedule
                # here instead of bursting to catch up. Small lateness keeps the schedule.
                self._base, self._k, due = now, 0, now
        if due is None:  # unreachable: the block above sets it whenever there was no schedule
            raise RuntimeError("playback: no due time for the next frame")
        if not self._clock.sleep_until(due, self._abort):
            return False
        with self._cond:
            if self._abort.is_set() or not self._queue:
                return False
            now = self._clock.now()
            if now > due + LATE_TOLERANCE * period:  # woke far too late: this frame starts a new schedule
                self._base, self._k = now, 0
            item = self._queue[0]
            if item.pos >= len(item.frames):
                # A chunk released whole ("chunk" mode) counts as playing until its last frame's
                # time has passed, so the lookahead bound means the same in both modes.
                self._queue.popleft()
                self._chunks_done += 1
                self._cond.notify_all()
                return True
            n = 1 if self.release == "frame" else len(item.frames) - item.pos
            block = item.frames[item.pos : item.pos + n]
            info = {
                **item.info,
                "first_frame": self._released,
                "frame_in_chunk": item.pos,
                "fps": self.fps,
                "last_of_chunk": item.pos + n >= len(item.frames),
            }
        self._deliver(block, info)
        with self._cond:
            item.pos += n
            self._released += n
            self._k += n
            now = self._clock.now()
            if self._first_release is None:
                self._first_release = now
            self._history.append((now, n))
            while self._history and self._history[0][0] + self._history[0][1] / self.fps < now - FPS_WINDOW_S:
                self._history.popleft()
            if item.pos >= len(item.frames) and self.release == "frame":
                self._queue.popleft()
                self._chunks_done += 1
            self._cond.notify_all()
        return True
