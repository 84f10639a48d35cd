"""Where a session's messages and frames go: the Ray layer plugs in its own, tests use MemorySink."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SessionSink(Protocol):
    """Receives everything a session produces. Calls come from several session threads but
    never concurrently for the same method (the session serialises them)."""

    def on_message(self, message: dict[str, Any]) -> None:
        """A JSON-safe protocol message (`state`, `event`, `ack`)."""
        ...

    def on_frames(self, frames: np.ndarray, info: dict[str, Any]) -> None:
        """uint8 (N, H, W, 3) frames released at playback time, with `chunk`, `first_frame`,
        `prompt`, `fps`, `last_of_chunk`, and `frames_ref` when the engine already stored the
        chunk's frames somewhere (ChunkResult.frames_ref): a sink that forwards whole chunks
        (release="chunk") may pass that on instead of copying the frames again."""
        ...


@dataclass
class FrameBlock:
    """One `on_frames` call as MemorySink recorded it."""

    frames: np.ndarray
    info: dict[str, Any]


class MemorySink:
    """Keeps every message and frame block in memory; tests wait on it instead of sleeping."""

    def __init__(self, clock: Any = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.blocks: list[FrameBlock] = []
        self.release_times: list[float] = []
        self._clock = clock
        self._cond = threading.Condition()

    def on_message(self, message: dict[str, Any]) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def on_frames(self, frames: np.ndarray, info: dict[str, Any]) -> None:
        with self._cond:
            self.blocks.append(FrameBlock(frames, dict(info)))
            if self._clock is not None:
                self.release_times.append(self._clock.now())
            self._cond.notify_all()

    # --- waiting ---------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        """Block until `predicate()` (evaluated under the sink's lock) holds, else TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                tail = [m for m in self.messages[-8:]]
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last messages: {tail}")

    def wait_for_message(
        self, match: Callable[[dict[str, Any]], bool], *, start: int = 0, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first message at index >= `start` for which `match` holds (waiting for it)."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            for m in self.messages[start:]:
                if match(m):
                    found.append(m)
                    return True
            return False

        self.wait_until(check, timeout, "a matching message")
        return found[0]

    def wait_for_event(self, event: str, *, start: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        """The data of the first `event` message named `event` at index >= `start`."""
        msg = self.wait_for_message(
            lambda m: m["type"] == "event" and m["data"]["event"] == event, start=start, timeout=timeout
        )
        return msg["data"]

    def wait_for_frames(self, n: int, timeout: float = 30.0) -> None:
        """Until at least `n` frames were released in total."""
        self.wait_until(lambda: self._frame_count() >= n, timeout, f"{n} frames")

    # --- reading ---------------------------------------------------------------------------
    def _frame_count(self) -> int:
        return sum(len(b.frames) for b in self.blocks)

    @property
    def frame_count(self) -> int:
        with self._cond:
            return self._frame_count()

    def snapshot(self) -> list[dict[str, Any]]:
        """A copy of the messages so far."""
        with self._cond:
            return list(self.messages)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Data of event messages (of one name if given), in order."""
        with self._cond:
            return [
                m["data"]
                for m in self.messages
                if m["type"] == "event" and (name is None or m["data"]["event"] == name)
            ]

    def acks(self) -> list[dict[str, Any]]:
        with self._cond:
            return [m["data"] for m in self.messages if m["type"] == "ack"]

    def states(self) -> list[dict[str, Any]]:
        with self._cond:
            return [m["data"] for m in self.messages if m["type"] == "state"]
