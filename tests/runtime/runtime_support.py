"""Engines and helpers for the runtime tests: a fast fake engine, a gate that lets a test
decide when each chunk is generated, and a message recorder that slices per command."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any
from unittest.mock import ANY

import numpy as np
from PIL import Image

from helios.pipeline.engine import ChunkResult, SynchronousEngine
from helios.runtime import MemorySink, Session, get_ctx

GATE_TIMEOUT_S = 60.0


class FastEngine(SynchronousEngine):
    """A StreamEngine that returns constant frames instantly and records every call."""

    def __init__(self, height: int = 16, width: int = 16, frames_per_chunk: int = 4, fps: int = 24) -> None:
        self.height, self.width, self.frames_per_chunk, self.fps = height, width, frames_per_chunk, fps
        self.calls: list[tuple[Any, ...]] = []
        self._chunk = 0
        self._prompt: str | None = None
        self._seed = 0

    @property
    def chunk_index(self) -> int:
        return self._chunk

    def reset(self, seed: int) -> None:
        self.calls.append(("reset", seed))
        self._chunk, self._seed = 0, seed

    def set_seed(self, seed: int) -> None:
        self.calls.append(("set_seed", seed))
        self._seed = seed

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        self.calls.append(("set_prompt", prompt))
        self._prompt = prompt

    def set_image(self, image, transition="cut") -> None:
        self.calls.append(("set_image", None if image is None else image.shape, transition))

    def next_chunk(self) -> ChunkResult:
        chunk = self._chunk
        self.calls.append(("next_chunk", chunk, self._prompt))
        frames = np.full((self.frames_per_chunk, self.height, self.width, 3), chunk % 256, dtype=np.uint8)
        self._chunk += 1
        return ChunkResult(chunk=chunk, frames=frames, prompt=self._prompt or "", seed=self._seed)


class GatedEngine(SynchronousEngine):
    """Wraps an engine: each `next_chunk` announces itself, then waits for `allow()`.

    Lets a protocol test know exactly which chunk is in flight when it sends a command.
    Control calls are recorded in `calls` (with ("next_chunk", index) when a chunk begins).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.height, self.width = inner.height, inner.width
        self.frames_per_chunk, self.fps = inner.frames_per_chunk, inner.fps
        self.calls: list[tuple[Any, ...]] = []
        self.begun = 0
        self.finished = 0
        self._allowed = 0
        self._cond = threading.Condition()

    @property
    def chunk_index(self) -> int:
        return self.inner.chunk_index

    def reset(self, seed: int) -> None:
        self.calls.append(("reset", seed))
        self.inner.reset(seed)

    def set_seed(self, seed: int) -> None:
        self.calls.append(("set_seed", seed))
        self.inner.set_seed(seed)

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        self.calls.append(("set_prompt", prompt))
        self.inner.set_prompt(prompt, blend_chunks)

    def set_image(self, image, transition="cut") -> None:
        self.calls.append(("set_image", None if image is None else tuple(image.shape), transition))
        self.inner.set_image(image, transition)

    def allow(self, n: int = 1) -> None:
        with self._cond:
            self._allowed += n
            self._cond.notify_all()

    def wait_begun(self, n: int, timeout: float = GATE_TIMEOUT_S) -> None:
        """Until the n-th `next_chunk` call has begun (and is waiting at the gate or past it)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.begun >= n, timeout):
                raise TimeoutError(f"chunk call #{n} did not begin within {timeout} s (begun: {self.begun})")

    def next_chunk(self) -> ChunkResult:
        ctx = get_ctx()
        with self._cond:
            self.begun += 1
            self.calls.append(("next_chunk", self.inner.chunk_index))
            self._cond.notify_all()
            while self._allowed == 0:
                if ctx.should_stop():  # end quietly: the loop drops this chunk and returns
                    frames = np.zeros((self.frames_per_chunk, self.height, self.width, 3), dtype=np.uint8)
                    return ChunkResult(chunk=self.inner.chunk_index, frames=frames, prompt="", seed=0)
                self._cond.wait(0.05)
            self._allowed -= 1
        result = self.inner.next_chunk()
        with self._cond:
            self.finished += 1
            self._cond.notify_all()
        return result


class Recorder:
    """Runs commands against a session and returns exactly the messages each one produced."""

    def __init__(self, session: Session, sink: MemorySink) -> None:
        self.session, self.sink = session, sink

    def run(self, cmd: dict[str, Any], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Messages from the command's first one up to and including its ack (generator must be quiet)."""
        start = len(self.sink.snapshot())
        ack = self.session.call(cmd, timeout)
        self.sink.wait_for_message(lambda m: m["type"] == "ack" and m["data"] == ack, start=start, timeout=timeout)
        msgs = self.sink.snapshot()[start:]
        end = next(i for i, m in enumerate(msgs) if m["type"] == "ack" and m["data"] == ack)
        return msgs[: end + 1]


def state(**fields: Any) -> dict[str, Any]:
    """An expected state message; unspecified fields default to the initial state."""
    data = {
        "running": False,
        "current_frame": 0,
        "current_chunk": 0,
        "current_prompt": None,
        "paused": False,
        "scheduled_prompts": {},
        "seed": 0,
        "effective_fps": ANY,
    }
    data.update(fields)
    data.setdefault("scheduled_count", len(data["scheduled_prompts"]))
    return {"type": "state", "data": data}


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "event", "data": {"event": name, **fields}}


def ack(cmd_id: Any = None, ok: bool = True, error: Any = None, result: Any = None) -> dict[str, Any]:
    return {"type": "ack", "data": {"id": cmd_id, "ok": ok, "error": error, "result": result}}


def failed(cmd_id: Any, *needles: str) -> Any:
    """Matcher for [error event, failed ack] whose message contains every needle."""

    class _Contains(str):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and all(n in other for n in needles)

        __hash__ = str.__hash__

    text = _Contains(" / ".join(needles))
    return [event("error", message=text), ack(cmd_id, ok=False, error=text)]


def session_threads(session: Session) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if session.session_id in t.name]


def drive(clock: Any, sink: MemorySink, frames: int, timeout: float = 30.0) -> None:
    """Advance a FakeClock deadline by deadline until `frames` frames were released.

    Only advances while the release thread sleeps on the clock: the frame count is then
    final for the current time, so no frame is released late or early.
    """
    while True:
        clock.wait_for(lambda: sink.frame_count >= frames or clock.has_sleeper(), timeout)
        if sink.frame_count >= frames:
            return
        clock.advance_to(clock.next_deadline())


def run_out(clock: Any, session: Session, timeout: float = 30.0) -> None:
    """Advance a FakeClock until the session has ended (playback drained)."""
    while True:
        clock.wait_for(lambda: session.ended or clock.has_sleeper(), timeout)
        if session.ended:
            return
        clock.advance_to(clock.next_deadline())


def png_b64(w: int = 48, h: int = 32, data_url: bool = True) -> str:
    """A small two-colour PNG as base64 (a data URL by default): a valid `set_image` payload."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/png;base64,{text}" if data_url else text
