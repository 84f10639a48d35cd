"""`HeliosModel`: the Helios session protocol (DESIGN section 6) on any `StreamEngine`.

All protocol semantics live here; the engine only generates. Commands change model state
under the session lock and never touch the engine's stream (their one engine call,
`prefetch_prompt`, only warms the prompt cache); the generation loop reads that state
at chunk boundaries and is the only caller of the stream controls (so a Ray proxy
driving a TP shard group sees one caller, in order).

Pipelining: the loop begins a chunk (`engine.begin_chunk()`, the latents) and hands it to
a `ChunkFinisher` thread, which waits for its frames and reports and emits it, in order.
With an engine whose `chunks_in_flight` is 2, the loop begins chunk n+1 while chunk n
still decodes; with 1, it waits for chunk n to be finished first (the synchronous loop).

Terms (also in docs/runtime.md):
- `current_chunk`: the index (since the last reset) of the chunk being generated, or, when
  no generation is in flight, of the next chunk to generate = chunks completed since reset.
- `current_frame`: frames generated since the last reset (= the first frame index of the
  chunk after the last completed one).
- a prompt command targets the first chunk whose generation has not begun: chunk 0 before
  start; `current_chunk` while paused or between chunks; `current_chunk + 1` while a chunk
  is being generated.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from helios.pipeline.engine import StreamEngine
from helios.models.limits import MAX_PROMPT_CHARS, SessionLimits
from helios.pipeline.image import decode_image_b64, resize_image
from helios.runtime import VideoModel, command, get_ctx
from helios.runtime.context import SessionContext, bind_ctx
from helios.runtime.finisher import ChunkFinisher
from helios.runtime.messages import event_message, state_message

log = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1

Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text prompt")]
ChunkIndex = Annotated[int, Field(ge=0, le=10**9, description="Chunk index (0-based, since the last reset)")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Noise seed")]


def clean_prompt(prompt: str, limits: SessionLimits) -> str:
    """The prompt trimmed, or ValueError when blank or over `max_prompt_chars`.

    A module function so a queued session's prompt is checked the same way before its model exists.
    """
    text = prompt.strip()
    if not text:
        raise ValueError("prompt: must not be blank")
    most = limits.max_prompt_chars
    if len(text) > most:
        raise ValueError(f"prompt: {len(text)} characters, over the max_prompt_chars limit of {most}")
    return text


def check_schedule_chunk(chunk: int, first: int, limits: SessionLimits) -> None:
    """ValueError when `chunk` is before `first` (the next chunk to generate) or past `max_chunks_ahead`."""
    if chunk < first:
        raise ValueError(f"chunk: {chunk} is in the past; the next chunk to generate is {first}")
    ahead = limits.max_chunks_ahead
    if chunk - first > ahead:
        raise ValueError(
            f"chunk: {chunk} is {chunk - first} chunks ahead of the next chunk to generate ({first}); "
            f"the max_chunks_ahead limit is {ahead}"
        )


@dataclass
class _Plan:
    """What the generation loop applies to the engine before one chunk (read under the lock)."""

    chunk: int
    epoch: int
    reset_seed: int | None = None
    seed: int | None = None
    image: tuple[np.ndarray | None, str] | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class HeliosModel(VideoModel):
    """The Helios protocol: prompts scheduled per chunk, reference image, start/pause/resume/reset, seed."""

    def __init__(self, engine: StreamEngine, *, seed: int = 0, limits: SessionLimits | None = None) -> None:
        self.engine = engine
        self.fps = float(engine.fps)
        self.limits = limits if limits is not None else SessionLimits()
        self._ctx: SessionContext | None = None
        self._started = False
        self._paused = False
        self._next = 0  # the next chunk to begin; chunks _chunk.._next-1 are begun and unfinished
        self._chunk = 0
        self._frames = 0
        self._scheduled: dict[int, str] = {}
        self._current_prompt: str | None = None
        self._engine_prompt: str | None = None
        self._seed = int(seed)
        self._seed_pending = False
        self._image: np.ndarray | None = None
        self._image_pending: str | None = None  # transition to apply at the next chunk
        self._epoch = 0

    # --- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The `state` message data; safe to call from any thread (takes the session lock)."""
        ctx = self._context()
        with ctx.lock if ctx is not None else contextlib.nullcontext():
            return self._state(ctx)

    def _state(self, ctx: SessionContext | None) -> dict[str, Any]:
        return {
            "running": self._started,
            "current_frame": self._frames,
            "current_chunk": self._chunk,
            "current_prompt": self._current_prompt,
            "paused": self._paused,
            "scheduled_prompts": self._scheduled_view(),
            "scheduled_count": len(self._scheduled),
            "seed": self._seed,
            "effective_fps": ctx.effective_fps() if ctx is not None else 0.0,
        }

    def _scheduled_view(self) -> dict[str, str]:
        """The earliest few scheduled prompts, each shortened: a `state` message stays small
        however much is scheduled (`get_schedule` pages through the full prompts)."""
        cut = self.limits.state_prompt_chars
        first = sorted(self._scheduled.items())[: self.limits.state_scheduled_entries]
        return {str(k): v if len(v) <= cut else v[: cut - 1] + "\u2026" for k, v in first}

    def _context(self) -> SessionContext | None:
        try:
            return get_ctx()
        except RuntimeError:
            return self._ctx

    def _send(self, message: dict[str, Any]) -> None:
        get_ctx().send(message)

    def _send_state(self) -> None:
        self._send(state_message(self.state()))

    def _next_open_chunk(self) -> int:
        """The first chunk whose generation has not begun."""
        return self._next

    @classmethod
    def check_queued_args(cls, name: str, kwargs: dict[str, Any], limits: SessionLimits) -> None:
        """What can be checked of a validated command before the model exists (a queued session's
        set-up command): prompts, how far ahead, the image. Raises ValueError naming the field."""
        if name in ("set_prompt", "schedule_prompt"):
            clean_prompt(kwargs["prompt"], limits)
        if name == "schedule_prompt":
            check_schedule_chunk(kwargs["chunk"], 0, limits)  # nothing is generated before admission
        if name == "set_image":
            decode_image_b64(kwargs["image_b64"], limits.image_options())

    # --- commands ------------------------------------------------------------------------
    @command("set_prompt")
    def set_prompt(self, prompt: Prompt) -> None:
        """Use `prompt` from the next chunk to generate (chunk 0 before start, the current chunk while paused)."""
        self._schedule(self._clean_prompt(prompt), self._next_open_chunk())

    @command("schedule_prompt")
    def schedule_prompt(self, prompt: Prompt, chunk: ChunkIndex) -> None:
        """Use `prompt` from chunk `chunk` on; replaces an earlier entry for that chunk; past chunks are refused."""
        check_schedule_chunk(chunk, self._next_open_chunk(), self.limits)
        self._schedule(self._clean_prompt(prompt), chunk)

    @command("get_schedule")
    def get_schedule(
        self,
        from_chunk: ChunkIndex = 0,
        limit: Annotated[int, Field(ge=1, le=16, description="Entries per page")] = 8,
    ) -> dict[str, Any]:
        """Return scheduled prompts in full, `limit` at a time from `from_chunk` on (a `state` message shortens them)."""
        entries = sorted((k, v) for k, v in self._scheduled.items() if k >= from_chunk)
        page = entries[:limit]
        return {
            "entries": [{"chunk": k, "prompt": v} for k, v in page],
            "total": len(self._scheduled),
            "next_chunk": entries[limit][0] if len(entries) > limit else None,
        }

    def _schedule(self, prompt: str, chunk: int) -> None:
        most = self.limits.max_scheduled_prompts
        if chunk not in self._scheduled and len(self._scheduled) >= most:
            raise ValueError(
                f"{len(self._scheduled)} prompts are already scheduled; the max_scheduled_prompts limit is {most} "
                "(replace a scheduled chunk, or wait until one is used)"
            )
        self._scheduled[chunk] = prompt
        self.engine.prefetch_prompt(prompt)  # encoding starts now, in the background, ahead of use
        self._send(event_message("prompt_scheduled", chunk=chunk, prompt=prompt))
        self._send_state()

    def _clean_prompt(self, prompt: str) -> str:
        return clean_prompt(prompt, self.limits)

    @command("set_image")
    def set_image(
        self,
        image_b64: Annotated[str, Field(description="Base64 image (PNG/JPEG/WebP) or a data: URL")],
        transition: Literal["cut", "blend"] = "cut",
    ) -> None:
        """Condition the stream on a reference image (resized to the model resolution) from the next chunk."""
        size = (int(self.engine.width), int(self.engine.height))
        image = decode_image_b64(image_b64, self.limits.image_options(target_size=size))
        image = resize_image(image, self.engine.width, self.engine.height)
        self._image = image
        self._image_pending = transition
        self._send(event_message("image_set", width=int(image.shape[1]), height=int(image.shape[0])))

    @command("start")
    def start(self) -> None:
        """Start generating; needs a prompt at chunk 0."""
        if self._started:
            raise ValueError("already started; use pause/resume, or reset to start over")
        prompt = self._scheduled.pop(0, None)
        if prompt is None:
            raise ValueError("no prompt at chunk 0; send set_prompt (or schedule_prompt with chunk 0) first")
        self._started = True
        self._paused = False
        self._current_prompt = prompt
        self._send(event_message("generation_started", prompt=prompt))
        self._send_state()

    @command("pause")
    def pause(self) -> None:
        """Stop after the chunk being generated; history is kept for resume."""
        if not self._started:
            raise ValueError("generation has not started")
        if self._paused:
            raise ValueError("already paused")
        self._paused = True
        self._send_state()

    @command("resume")
    def resume(self) -> None:
        """Continue a paused stream from where it stopped."""
        if not self._started:
            raise ValueError("generation has not started")
        if not self._paused:
            raise ValueError("not paused")
        self._paused = False
        self._send_state()

    @command("reset")
    def reset(self) -> None:
        """Stop and forget everything but the seed: history, prompts, image; the next start is chunk 0."""
        frame, chunk = self._frames, self._chunk
        self._epoch += 1
        self._next = 0  # chunks in flight belong to the old stream and are discarded
        self._started = False
        self._paused = False
        self._chunk = 0
        self._frames = 0
        self._scheduled.clear()
        self._current_prompt = None
        self._image = None
        self._image_pending = None
        self._seed_pending = False
        self._send(event_message("generation_reset", frame=frame, chunk=chunk))
        self._send_state()

    @command("set_seed")
    def set_seed(self, seed: Seed) -> None:
        """Draw noise with `seed` from the next chunk on, keeping history (no reset)."""
        self._seed = seed
        self._seed_pending = True
        self._send(event_message("seed_set", seed=seed))

    # --- generation loop ------------------------------------------------------------------
    def start_session(self) -> None:
        ctx = get_ctx()
        self._ctx = ctx
        finisher = ChunkFinisher(self._finish_chunk, depth=max(1, int(self.engine.chunks_in_flight)),
                                 name=f"session-{ctx.session_id}-finish", initializer=lambda: bind_ctx(ctx))
        try:
            self._generate(ctx, finisher)
        finally:
            error = finisher.close()  # every begun chunk is finished (or dropped after a stop) first
        if error is not None:
            raise error

    def _generate(self, ctx: SessionContext, finisher: ChunkFinisher) -> None:
        while not ctx.should_stop():
            finisher.reserve()
            with ctx.lock:
                if not ctx.wait_for(lambda: self._started and not self._paused):
                    finisher.release()
                    return
            # Just in time: decide what the next chunk uses only when it must begin, so a
            # prompt set while the current chunk plays is used by the very next one.
            if not ctx.wait_until_needed():
                finisher.release()
                return
            with ctx.lock:
                if not (self._started and not self._paused):  # paused or reset while waiting
                    ctx.chunk_dropped()
                    finisher.release()
                    continue
                plan = self._plan_chunk()
                for message in plan.messages:
                    ctx.send(message)
            self._apply(plan)
            t0 = time.perf_counter()
            pending = self.engine.begin_chunk()
            finisher.put(plan, pending, t0)

    def _finish_chunk(self, plan: _Plan, pending: Any, t0: float) -> None:
        """On the finisher thread: wait for the frames, report the chunk, hand the frames to playback."""
        result = pending.result()
        gen_ms = round((time.perf_counter() - t0) * 1000.0, 1)
        ctx = get_ctx()
        with ctx.lock:
            ctx.notify()
            if plan.epoch != self._epoch:
                ctx.chunk_dropped()
                return  # reset while generating: this chunk belongs to the old stream
            if result.chunk != plan.chunk:
                log.warning("engine produced chunk %d, the protocol expected %d", result.chunk, plan.chunk)
            n = int(result.frames.shape[0])
            self._chunk += 1
            self._frames += n
            ctx.send(event_message("chunk_complete", chunk=plan.chunk, frames=n, prompt=result.prompt, gen_ms=gen_ms))
            self._send_state()
        stored = {"frames_ref": result.frames_ref} if result.frames_ref is not None else {}
        ctx.emit_block(result.frames, chunk=plan.chunk, prompt=result.prompt, seed=result.seed, **stored)

    def _plan_chunk(self) -> _Plan:
        """Decide (under the lock) what the next chunk uses, and mark it begun."""
        n = self._next
        plan = _Plan(chunk=n, epoch=self._epoch)
        due = [k for k in self._scheduled if k <= n]
        if due:
            prompt = self._scheduled[max(due)]
            for k in due:
                del self._scheduled[k]
            if prompt != self._current_prompt:
                self._current_prompt = prompt
                plan.messages.append(event_message("prompt_switched", new_prompt=prompt))
        if n == 0:
            # A fresh stream: the engine forgets any previous one, and gets image and prompt anew.
            plan.reset_seed = self._seed
            self._seed_pending = False
            self._engine_prompt = None
            if self._image is not None:
                plan.image = (self._image, "cut")
            self._image_pending = None
        else:
            if self._seed_pending:
                plan.seed = self._seed
                self._seed_pending = False
            if self._image_pending is not None:
                plan.image = (self._image, self._image_pending)
                self._image_pending = None
        if self._current_prompt != self._engine_prompt:
            plan.prompt = self._current_prompt
            self._engine_prompt = self._current_prompt
        self._next = n + 1
        if plan.messages:
            plan.messages.append(state_message(self.state()))
        return plan

    def _apply(self, plan: _Plan) -> None:
        """Engine calls for one chunk, outside the lock (text encoding may take a while)."""
        if plan.reset_seed is not None:
            self.engine.reset(plan.reset_seed)
        if plan.seed is not None:
            self.engine.set_seed(plan.seed)
        if plan.image is not None:
            self.engine.set_image(plan.image[0], plan.image[1])  # type: ignore[arg-type]
        if plan.prompt is not None:
            self.engine.set_prompt(plan.prompt)
