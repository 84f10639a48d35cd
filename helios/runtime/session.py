"""`Session`: drives one VideoModel with a command thread, a generation thread and paced playback.

Threads:
- commands: applies submitted commands strictly in arrival order, each under the model
  lock, then answers an `ack`;
- generation: runs `model.start_session()`; when it returns or raises, shuts the session
  down (commands, playback, `on_session_end`) and sends `session_ended` last;
- release: `Playback`, handing frames to the sink at the stream's fps.

A model's loop calls `ctx.wait_until_needed()` before each chunk to begin it just in time
(`JustInTime`): the chunk being generated is then the next one shown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Literal

import numpy as np

from helios.runtime.clock import Clock, MonotonicClock
from helios.runtime.commands import CommandError
from helios.runtime.context import SessionContext, bind_ctx
from helios.runtime.forward import Forward
from helios.runtime.jit import JustInTime
from helios.runtime.messages import ack_message, error_message, event_message
from helios.runtime.model import VideoModel
from helios.runtime.playback import Playback
from helios.runtime.sink import SessionSink

log = logging.getLogger(__name__)

_STOP = object()
_COMMAND_KEYS = {"command", "args", "id"}


def _echo_id(cmd: Any) -> str | int | None:
    """The id an ack echoes: the command's string (or int) id; None for anything else, so every
    ack, the refusals of a session that has ended included, carries an id a client can match."""
    cmd_id = cmd.get("id") if isinstance(cmd, dict) else None
    return cmd_id if isinstance(cmd_id, (str, int)) and not isinstance(cmd_id, bool) else None


class Session:
    """One live stream: a model, its sink, its threads. Not restartable."""

    def __init__(
        self,
        model: VideoModel,
        sink: SessionSink,
        *,
        clock: Clock | None = None,
        lookahead: int = 1,
        release: Literal["frame", "chunk"] = "frame",
        fps: float | None = None,
        session_id: str | None = None,
        just_in_time: bool = True,
        jit: JustInTime | None = None,
    ) -> None:
        if not isinstance(model, VideoModel):
            raise ValueError(f"model: expected a VideoModel, got {type(model).__name__}")
        if not isinstance(lookahead, int) or lookahead < 0:
            raise ValueError(f"lookahead: must be an int >= 0, got {lookahead!r}")
        self.model = model
        self.sink = sink
        self.clock: Clock = clock or MonotonicClock()
        self.just_in_time = bool(just_in_time)
        self.jit = jit if jit is not None else JustInTime()
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.fps = float(fps if fps is not None else getattr(model, "fps", 24.0))
        self.context = SessionContext(self)
        self._stop_event = threading.Event()
        self._ended = threading.Event()
        self._closed = False
        self._send_lock = threading.Lock()
        self._frames_lock = threading.Lock()
        self._stop_reason: str | None = None
        self.end_reason: str | None = None
        self._emitted = 0
        self._chunk_frames = 0  # frames of the last emitted chunk (how long one chunk plays)
        self._commands: queue.Queue[Any] = queue.Queue()
        self._accepting = True
        self._accept_lock = threading.Lock()
        self._playback = Playback(
            self._deliver_frames,
            clock=self.clock,
            fps=self.fps,
            lookahead=lookahead,
            release=release,
            name=f"session-{self.session_id}",
            on_error=self._release_failed,
        )
        self._cmd_thread = threading.Thread(
            target=self._run_commands, name=f"session-{self.session_id}-commands", daemon=True
        )
        self._gen_thread = threading.Thread(
            target=self._run_generation, name=f"session-{self.session_id}-generation", daemon=True
        )
        self._started = False

    # --- public API --------------------------------------------------------------------------
    def start(self) -> "Session":
        """Start the threads (once)."""
        if self._started:
            raise RuntimeError(f"session {self.session_id} was already started")
        self._started = True
        self._playback.start()
        self._cmd_thread.start()
        self._gen_thread.start()
        return self

    def submit(self, cmd: Any) -> Future:
        """Queue a command dict `{"command", "args", "id"}`; its ack comes as a message (and the future)."""
        fut: Future = Future()
        with self._accept_lock:
            if self._accepting and self._started:
                self._commands.put((cmd, fut))
                return fut
        fut.set_result(ack_message(_echo_id(cmd), False, "session has ended" if self._started else "session not started")["data"])
        return fut

    def call(self, cmd: Any, timeout: float | None = 30.0) -> dict[str, Any]:
        """Submit and wait for the ack data `{id, ok, error, result}`."""
        return self.submit(cmd).result(timeout)

    def stop(self, reason: str = "stopped") -> None:
        """Ask the session to end (cooperative: the loop returns at its next check)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_event.set()
        self._playback.abort()
        self.context.notify()
        if not self._started:
            self._finish(reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait (up to `timeout` in all) until every session thread has exited; True if they all have."""
        give_up = None if timeout is None else time.monotonic() + timeout
        for t in (self._gen_thread, self._cmd_thread, self._playback._thread):
            if t.is_alive():
                t.join(None if give_up is None else max(0.0, give_up - time.monotonic()))
        return self._ended.is_set() and not any(
            t.is_alive() for t in (self._gen_thread, self._cmd_thread, self._playback._thread)
        )

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    # --- the SessionHost interface its SessionContext uses -----------------------------------
    @property
    def stopping(self) -> bool:
        """True once the session was asked to stop (or its generation loop returned)."""
        return self._stop_event.is_set()

    frames_released = Forward[int]("_playback", "Frames handed to the sink so far.")
    chunks_released = Forward[int]("_playback", "Chunks whose every frame was handed to the sink.")
    chunks_pending = Forward[int]("_playback", "Chunks handed to playback and not yet fully played.", attr="pending_chunks")
    effective_fps = Forward[Callable[[], float]]("_playback", "`effective_fps()`: measured playback rate over the last seconds.")

    def wait_until_needed(self) -> bool:
        """Sleep until the next chunk should begin to be ready just before playback needs it.

        Returns at once when playback waits for nothing or the chunk is already due (a
        generator slower than real time runs back to back), and always with
        `just_in_time=False` (the generator then runs `lookahead` chunks ahead); False when
        the session stops.
        """
        if not self.just_in_time:
            return not self._stop_event.is_set()
        slept = False
        while not self._stop_event.is_set():
            start_at = self.jit.start_time(self._needed_at())
            if start_at is None or self.clock.now() >= start_at:
                break
            slept = True
            if not self.clock.sleep_until(start_at, self._stop_event):
                break
        if self._stop_event.is_set():
            return False
        self.jit.begin(self.clock.now(), on_schedule=slept)
        return True

    def chunk_dropped(self) -> None:
        """A chunk begun after `wait_until_needed` will not be emitted (e.g. a reset discarded it)."""
        self.jit.drop()

    def _needed_at(self) -> float | None:
        """When playback needs the next chunk to begin now: after what is queued and what is in flight."""
        needed = self._playback.next_needed_at()
        if needed is None or not self._chunk_frames:
            return needed
        return needed + self.jit.in_flight * self._chunk_frames / self.fps

    def send(self, message: dict[str, Any]) -> None:
        """Hand a protocol message to the sink (dropped after `session_ended`)."""
        with self._send_lock:
            if self._closed:
                log.debug("session %s: dropping message after session_ended: %s", self.session_id, message)
                return
            try:
                self.sink.on_message(message)
            except Exception:  # noqa: BLE001 - a broken sink must not kill the session threads
                log.exception("session %s: sink.on_message failed", self.session_id)

    def emit(self, frames: np.ndarray, info: dict[str, Any]) -> None:
        """Queue generated frames for paced playback (ignored once stopping)."""
        if self._stop_event.is_set():
            return
        info = dict(info)
        info.setdefault("chunk", self._emitted)
        info.setdefault("prompt", None)
        self._emitted += 1
        self._chunk_frames = int(frames.shape[0])
        self.jit.finish(self.clock.now(), self._playback.next_needed_at())
        self._playback.push(frames, info)

    # --- internals ---------------------------------------------------------------------------
    def _release_failed(self, exc: BaseException) -> None:
        """The sink could not take frames: the stream is broken, end the session."""
        self.send(error_message(f"frame delivery failed: {type(exc).__name__}: {exc}"))
        self.stop("error")

    def _deliver_frames(self, frames: np.ndarray, info: dict[str, Any]) -> None:
        with self._frames_lock:
            if self._closed:
                return
            self.sink.on_frames(frames, info)

    # --- threads -----------------------------------------------------------------------------
    def _run_commands(self) -> None:
        bind_ctx(self.context)
        while True:
            item = self._commands.get()
            if item is _STOP:
                return
            cmd, fut = item
            ack = self._execute(cmd)
            fut.set_result(ack)

    def _execute(self, cmd: Any) -> dict[str, Any]:
        # The whole command, its messages and its ack happen under the model lock, so nothing
        # the generation loop sends can fall between a command's messages and its ack.
        with self.context.lock:
            try:
                return self._apply(cmd)
            finally:
                self.context.notify()

    def _apply(self, cmd: Any) -> dict[str, Any]:
        cmd_id = None
        name = "command"
        try:
            if not isinstance(cmd, dict):
                raise CommandError(f"command: expected an object {{command, args, id}}, got {type(cmd).__name__}")
            cmd_id = _echo_id(cmd)
            if cmd.get("id") is not None and cmd_id is None:
                raise CommandError("id: must be a string")
            extra = set(cmd) - _COMMAND_KEYS
            if extra:
                raise CommandError(f"command: unknown field(s) {sorted(extra)}; expected command, args, id")
            name = cmd.get("command")
            if not isinstance(name, str) or not name:
                raise CommandError("command: missing the 'command' name")
            specs = self.model.commands()
            spec = specs.get(name)
            if spec is None:
                raise CommandError(f"unknown command {name!r}; known commands: {', '.join(sorted(specs))}")
            kwargs = spec.validate(cmd.get("args"))
            result = spec.func(self.model, **kwargs)
        except ValueError as exc:
            text = str(exc)
            if not (text.startswith(f"{name}:") or text.startswith("unknown command") or text.startswith("command:")):
                text = f"{name}: {text}"
            return self._refuse(cmd_id, text)
        except Exception as exc:  # noqa: BLE001 - a buggy command must not kill the session
            log.exception("session %s: command %r failed", self.session_id, name)
            return self._refuse(cmd_id, f"{name}: internal error ({type(exc).__name__}: {exc})")
        ack = ack_message(cmd_id, True, None, result)
        self.send(ack)
        return ack["data"]

    def _refuse(self, cmd_id: Any, text: str) -> dict[str, Any]:
        self.send(error_message(text))
        ack = ack_message(cmd_id, False, text)
        self.send(ack)
        return ack["data"]

    def _run_generation(self) -> None:
        bind_ctx(self.context)
        reason = "completed"
        try:
            self.model.start_session()
        except Exception as exc:  # noqa: BLE001 - reported to the client, then the session ends
            log.exception("session %s: generation loop failed", self.session_id)
            self.send(error_message(f"generation failed: {type(exc).__name__}: {exc}"))
            reason = "error"
        else:
            if self._stop_event.is_set():
                reason = self._stop_reason or "stopped"
        finally:
            try:
                self._shutdown(reason)
            finally:
                bind_ctx(None)

    def _shutdown(self, reason: str) -> None:
        drain = reason == "completed" and not self._stop_event.is_set()
        self._stop_event.set()
        self.context.notify()
        with self._accept_lock:
            self._accepting = False
            self._commands.put(_STOP)
        self._cmd_thread.join()
        # Refuse whatever arrived after the sentinel was queued (cannot happen once accepting is off,
        # but keep the queue empty so no future is left pending).
        while True:
            try:
                item = self._commands.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                cmd, fut = item
                fut.set_result(ack_message(_echo_id(cmd), False, "session has ended")["data"])
        self._playback.finish(drain=drain)
        try:
            self.model.on_session_end()
        except Exception:  # noqa: BLE001
            log.exception("session %s: on_session_end failed", self.session_id)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        with self._send_lock:
            if self._closed:
                return
            self.end_reason = reason
            try:
                self.sink.on_message(event_message("session_ended", reason=reason))
            except Exception:  # noqa: BLE001
                log.exception("session %s: sink.on_message failed", self.session_id)
            self._closed = True
        with self._frames_lock:
            pass  # any on_frames in flight has returned; none will follow
        self._ended.set()
