"""`get_ctx()`: the running session as seen from model code (commands and the generation loop)."""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable, Protocol

import numpy as np

from helios.runtime.forward import Forward
from helios.runtime.messages import error_message

_current: contextvars.ContextVar["SessionContext | None"] = contextvars.ContextVar("helios_session_ctx", default=None)


def get_ctx() -> "SessionContext":
    """The context of the session whose thread is calling; RuntimeError outside a session."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("get_ctx() called outside a running session (only session threads have a context)")
    return ctx


def bind_ctx(ctx: "SessionContext | None") -> contextvars.Token:
    """Make `ctx` the context of the calling thread (the session does this for its threads)."""
    return _current.set(ctx)


class SessionHost(Protocol):
    """What a `SessionContext` needs from the session it belongs to (`Session` implements it).

    A protocol rather than the `Session` class so the context depends on an interface, not
    on the session module (which builds contexts), and reads no private state.
    """

    @property
    def session_id(self) -> str: ...

    @property
    def fps(self) -> float: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def frames_released(self) -> int: ...

    @property
    def chunks_released(self) -> int: ...

    def send(self, message: dict[str, Any]) -> None: ...

    def emit(self, frames: np.ndarray, info: dict[str, Any]) -> None: ...

    def effective_fps(self) -> float: ...

    def wait_until_needed(self) -> bool: ...

    def chunk_dropped(self) -> None: ...


class SessionContext:
    """What a model may do with its session.

    `lock` serialises model state: every command runs holding it, and the generation loop
    takes it at chunk boundaries. `wait_for` sleeps on it until a command changes state.
    Never hold `lock` while generating or inside `emit_block`.
    """

    def __init__(self, session: SessionHost) -> None:
        self._session = session
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)

    session_id = Forward[str]("_session", "The session's id.")
    fps = Forward[float]("_session", "The playback rate frames are released at.")
    frames_released = Forward[int]("_session", "Frames handed to viewers so far (the playback position).")
    chunks_released = Forward[int]("_session", "Chunks whose every frame was handed to viewers.")
    effective_fps = Forward[Callable[[], float]]("_session", "`effective_fps()`: measured playback rate over the last seconds.")

    def should_stop(self) -> bool:
        """True once the session is stopping: the generation loop should return soon."""
        return self._session.stopping

    def send(self, message: dict[str, Any]) -> None:
        """Send a protocol message (`{"type": ..., "data": {...}}`) to the session's sink."""
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ValueError(f"message: expected a dict with a 'type' string, got {message!r:.80}")
        self._session.send(message)

    def send_error(self, message: str) -> None:
        """Send an `error` event."""
        self._session.send(error_message(message))

    def emit_block(self, frames: np.ndarray, **info: Any) -> None:
        """Hand generated frames (uint8 (N, H, W, 3)) to playback; blocks to keep pacing.

        Extra keyword arguments (`chunk`, `prompt`, ...) travel with the frames to the sink.
        Returns immediately once the session is stopping.
        """
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"frames: expected a numpy array, got {type(frames).__name__}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"frames: expected uint8 (N, H, W, 3) with N >= 1, got {frames.dtype} {frames.shape}")
        self._session.emit(np.ascontiguousarray(frames), info)

    def wait_until_needed(self) -> bool:
        """Block until the next chunk should begin so it is ready just before playback needs it.

        Call it before deciding what the next chunk uses (never holding `lock`), so commands
        that arrive meanwhile apply to that chunk. Returns at once for a generator slower than
        real time; False when the session is stopping.
        """
        return self._session.wait_until_needed()

    def chunk_dropped(self) -> None:
        """A chunk begun after `wait_until_needed` will not be emitted (so its time is not waited for)."""
        self._session.chunk_dropped()

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until `predicate()` holds (re-checked after every command) or the session stops.

        Returns `predicate()`'s final value, False when stopping.
        """
        with self._cond:
            self._cond.wait_for(lambda: self.should_stop() or predicate(), timeout)
            return not self.should_stop() and bool(predicate())

    def notify(self) -> None:
        """Wake `wait_for` callers (the session calls this after every command and on stop)."""
        with self._cond:
            self._cond.notify_all()
