"""One detached, named actor per session: the runtime `Session` on a leased shard group.

Frames leave as object refs (each chunk in the object store once: the ref rank 0 of the
shard group put, handed on as is; a model without a group is `ray.put` here), kept in a
bounded ring that the relay long-polls with `wait_chunks`; protocol messages go to a bounded, sequenced log
that SSE and WebSocket long-poll with `wait_messages`. The actor always gives its group
back to the registry, whatever ended the session, and lingers briefly so viewers can
drain the last chunks before its objects die with it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout

import ray

from deployments.actor_sink import ActorSink
from deployments.lookup import get_actor
from deployments.model_factory import ModelFactory, model_factory_for
from deployments.naming import NAMESPACE
from deployments.protocol import (
    ChunkBatch,
    ChunkItem,
    CommandRateLimited,
    LoggedMessage,
    MessageBatch,
    SessionActorArgs,
    SessionAssignment,
    SessionStarted,
    SessionStats,
)
from deployments.shard import ShardGroupEngine
from helios.runtime import RateLimitSpec, Session, TokenBucket, pacing_options
from helios.runtime.messages import Message, ack_message, event_message

logger = logging.getLogger(__name__)

WATCH_PERIOD_S = 0.5
PARKED_CHECK_S = 2.0
"""How often a spare asks its registry whether it still owns it."""


class SessionActor:
    """Runs one session; every public method is safe to call from any process by the actor's name.

    Created with `SessionActorArgs` (deployments/spares.py); `model_factory` builds the model on
    the leased group, by default the one of its spec's kind.
    """

    def __init__(self, args: SessionActorArgs, model_factory: ModelFactory | None = None):
        self.timing: dict[str, float] = {"actor_created_at": time.time()}
        """Wall-clock stamps on the way to the first frame (chunk 0 carries them: the TTFF breakdown)."""
        if args.assignment.admitted_at is not None:
            self.timing["admitted_at"] = args.assignment.admitted_at
        self.session_id = args.session_id
        self.model_name = args.model
        self.spec = args.spec
        self.model_factory = model_factory or model_factory_for(args.spec)
        self.registry_name = args.registry_name
        self.linger_s = args.linger_s
        self._take(args.assignment)
        self.pending_timeout_s = 30.0
        """Longest wait for each command kept while queued, at start."""
        self.ring: deque[ChunkItem] = deque(maxlen=args.ring_size)
        self.messages: deque[LoggedMessage] = deque(maxlen=args.message_log_size)
        self.next_seq = 1
        self.next_chunk = 0
        self.next_frame = 0
        self.state: dict = {}
        self.ended = False
        self.end_reason: str | None = None
        self.created_at = time.time()
        self.last_activity = time.monotonic()
        self.pollers = 0
        self.gen_ms: deque[float] = deque(maxlen=32)
        self.chunk_times: deque[float] = deque(maxlen=32)
        self.session = None
        self.engine: ShardGroupEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._cmd_lock = threading.Lock()
        self._finalized = False
        self._last_error: str | None = None
        self._final_done: asyncio.Future | None = None
        self._watch_task = None
        self._starting = False
        self._parked: asyncio.Future | None = None
        self._ready = asyncio.Event()
        """Set once start() has finished (successfully or not): commands wait for it."""
        if args.spare:
            # From birth, not from `park`: a registry that dies between creating a spare and parking it
            # never parks it, and the spare must still exit (Ray runs an async actor's __init__ in its loop).
            self._parked = asyncio.ensure_future(self._watch_owner())

    # ---- start-up -------------------------------------------------------------------
    async def park(self) -> None:
        """Wait as a spare (deployments/spares.py) until `start` makes this a session, or exit once the
        registry answers that it no longer owns it (a restarted registry does not keep its predecessor's
        spares, it starts its own; or it is shutting down), or no registry by its name exists: a spare
        never outlives the registry that made it. The check runs in the background from the constructor
        on (`SessionActorArgs.spare`); this call answers the registry's "is it up"."""

    async def _watch_owner(self) -> None:
        while not self._ready.is_set() and not self._starting:
            await asyncio.sleep(PARKED_CHECK_S)  # a period, not a synchronisation
            if self._ready.is_set() or self._starting:
                return
            try:
                registry = await get_actor(self.registry_name, NAMESPACE)
                owned = registry is not None and await registry.owns_spare.remote(self.session_id)
            except ray.exceptions.RayError as exc:
                # No answer (the registry restarting, a GCS hiccup) is not "not owned": ask again.
                # Only an answer ends a spare: no registry by that name, or one that does not keep it.
                logger.info("spare %s: no answer from its registry (%s): asking again", self.session_id, type(exc).__name__)
                continue
            if not owned and not self._starting:
                logger.info("spare %s: no registry owns it any more: exiting", self.session_id)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    def _take(self, a: SessionAssignment) -> None:
        """Hold the session part of `a`: tenant, group, seed and quotas."""
        self.tenant, self.group, self.seed = a.tenant, a.group, a.seed
        self.idle_timeout_s, self.max_session_s = a.idle_timeout_s, a.max_session_s
        # One bucket per session, here and not in a front-door replica: every replica sees the same rate.
        self.command_bucket = TokenBucket.from_spec(a.command_rate or RateLimitSpec())

    def _assign(self, a: SessionAssignment) -> None:
        """Become the session of `a` (a spare was created with a placeholder assignment)."""
        self._take(a)
        self.created_at = a.admitted_at
        self.last_activity = time.monotonic()
        # Started long before its session: for the breakdown it was there at admission (0 s to create).
        self.timing.update(admitted_at=a.admitted_at, actor_created_at=a.admitted_at, spare=1.0)

    async def start(self, pending: list[dict] | None = None, assignment: SessionAssignment | None = None) -> SessionStarted:
        """Build the model on the leased group, start the session and apply `pending` (the set-up
        commands kept while it was queued) in order; raises if the model cannot start.

        `assignment` makes a spare this session (its tenant, group, seed, quotas).
        Commands sent meanwhile wait for `_ready`, so they come after every pending one.
        """
        self._starting = True
        if assignment is not None:
            self._assign(assignment)
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.timing["start_called_at"] = time.time()
        try:
            await asyncio.to_thread(self._build)
            self.timing["actor_ready_at"] = time.time()
            if pending:
                await asyncio.to_thread(self._apply_pending, list(pending))
        except BaseException as exc:
            await self._finalize(f"error: could not start the model: {exc}", start_failed=True)
            raise
        finally:
            self._ready.set()
        self._watch_task = asyncio.ensure_future(self._watch())
        return SessionStarted(self.session_id, self._geometry(), node_id=ray.get_runtime_context().get_node_id())

    def _build(self) -> None:
        built = self.model_factory(self.group, int(self.seed) if self.seed is not None else 0)
        self.model, self.engine = built.model, built.engine
        self.session = Session(
            self.model, ActorSink(self), lookahead=self.spec.lookahead, release="chunk", session_id=self.session_id,
            **pacing_options(self.spec.pacing),
        )
        self.session.start()

    def _apply_pending(self, pending: list[dict]) -> None:
        """Submit every kept command in order, then wait for their acks (they go to the message log)."""
        with self._cmd_lock:
            futures = [self.session.submit(cmd) for cmd in pending]
        for fut in futures:
            try:
                fut.result(self.pending_timeout_s)
            except FutureTimeout:
                # Still queued in the session, in order: its ack comes on the message log later.
                logger.warning("session %s: a queued command is still running after %.0f s", self.session_id, self.pending_timeout_s)
                return

    def _geometry(self) -> dict:
        engine = getattr(self.model, "engine", None)
        return {k: getattr(engine, k, None) for k in ("height", "width", "frames_per_chunk", "fps")}

    # ---- from the generation thread ---------------------------------------------------
    def _from_thread(self, fn, *args) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closing at shutdown
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _add_message(self, message: Message) -> None:
        data = message.get("data") or {}
        if message.get("type") == "event" and data.get("event") == "error":
            self._last_error = data.get("message")
        if message.get("type") == "event" and data.get("event") == "session_ended" and data.get("reason") == "error":
            # The runtime says only "error": name the cause (a dead shard worker, the failing call).
            cause = self.engine.failure if self.engine is not None and self.engine.failure else self._last_error
            if cause:
                message = {"type": "event", "data": {**data, "reason": f"error: {cause}"}}
        self.messages.append(LoggedMessage(self.next_seq, message))
        self.next_seq += 1
        if message.get("type") == "state":
            self.state = message.get("data", {})
        data = message.get("data") or {}
        if message.get("type") == "event" and data.get("event") == "chunk_complete":
            if data.get("gen_ms") is not None:
                self.gen_ms.append(float(data["gen_ms"]))
        if message.get("type") == "event" and data.get("event") == "session_ended":
            if not self.ended:
                self.ended = True
                self.end_reason = data.get("reason")
            asyncio.ensure_future(self._finalize(self.end_reason))
        self._notify()

    def _add_chunk(self, ref, shape, info: dict) -> None:
        n = int(shape[0])
        meta = {
            "chunk": self.next_chunk,
            "model_chunk": info.get("chunk"),
            "first_frame": self.next_frame,
            "frames": n,
            "height": int(shape[1]),
            "width": int(shape[2]),
            "fps": info.get("fps"),
            "prompt": info.get("prompt"),
            "produced_at": time.time(),
        }
        if self.next_chunk == 0:
            meta["session_created_at"] = self.created_at  # time to first frame, measured where a viewer gets it
            meta["timing"] = {**self.timing, "first_chunk_at": meta["produced_at"]}
        self.ring.append(ChunkItem(self.next_chunk, [ref], meta))
        self.chunk_times.append(time.monotonic())
        self.next_chunk += 1
        self.next_frame += n
        self._notify()

    # ---- long polls -------------------------------------------------------------------
    async def _wait(self, ready, timeout_s: float, *, viewer: bool = True) -> None:
        """Long-poll until `ready()`. Only `viewer` polls (message streams) count as presence:
        the relay's chunk feeds poll forever (the recording is one), so they announce real
        viewers through `touch()` instead, or the idle timeout could never fire."""
        if not viewer:
            return await self._poll(ready, timeout_s)
        self.pollers += 1
        self.last_activity = time.monotonic()
        try:
            await self._poll(ready, timeout_s)
        finally:
            self.pollers -= 1
            self.last_activity = time.monotonic()

    async def _poll(self, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + max(0.0, min(float(timeout_s), 60.0))
        while not ready() and not self.ended:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                break

    async def wait_chunks(self, after: int, timeout_s: float) -> ChunkBatch:
        """Chunks with index > `after` still in the ring (long poll; returns early when any exist or the session ends)."""
        after = int(after)
        await self._wait(lambda: bool(self.ring) and self.ring[-1].chunk > after, timeout_s, viewer=False)
        return ChunkBatch(
            chunks=[c for c in self.ring if c.chunk > after],
            ended=self.ended,
            end_reason=self.end_reason,
            oldest=self.ring[0].chunk if self.ring else -1,
            latest=self.ring[-1].chunk if self.ring else -1,
        )

    async def wait_messages(self, after: int, timeout_s: float) -> MessageBatch:
        """Messages with sequence number > `after` (long poll). `lost` counts messages already dropped from the log."""
        after = int(after)
        await self._wait(lambda: bool(self.messages) and self.messages[-1].seq > after, timeout_s)
        oldest = self.messages[0].seq if self.messages else self.next_seq
        last = self.messages[-1].message if self.messages else {}
        complete = bool(self.ended and last.get("data", {}).get("event") == "session_ended")
        return MessageBatch(
            messages=[m for m in self.messages if m.seq > after],
            lost=max(0, oldest - after - 1),
            ended=self.ended,
            complete=complete or (self.ended and self._finalized),
            end_reason=self.end_reason,
        )

    # ---- commands & info -----------------------------------------------------------------
    async def command(self, cmd: dict, timeout_s: float = 30.0) -> dict:
        """Run one command (in arrival order) and return its ack data; CommandRateLimited over the rate.

        A command refused for its rate never reaches the session, so a flood of them leaves
        the message log (and every SSE/WS reader) alone.
        """
        self.last_activity = time.monotonic()
        if cmd.get("command") == "start":
            self.timing.setdefault("start_command_at", time.time())
        if not self.command_bucket.try_acquire():
            bucket = self.command_bucket
            wait = bucket.retry_after_s()
            raise CommandRateLimited(
                f"command_rate: over {bucket.rate_per_s:g} commands/s (burst {bucket.burst}) for this session; "
                f"retry after {wait:.2f} s",
                retry_after_s=wait,
            )
        if not self._ready.is_set():
            # Admitted from the queue a moment ago: the model is still being built, or the
            # commands kept while queued are being applied (this one must come after them).
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return ack_message(cmd.get("id"), False, "session: still starting, try again")["data"]
        if self.ended or self.session is None:
            return ack_message(cmd.get("id"), False, f"session has ended ({self.end_reason})")["data"]

        def call() -> dict:
            with self._cmd_lock:
                return self.session.call(cmd, timeout_s)

        ack = await asyncio.to_thread(call)
        return ack.get("data", ack) if isinstance(ack, dict) and ack.get("type") == "ack" else ack

    async def log_seq(self) -> int:
        """The sequence number of the last message logged so far (0: none): the front door sends the
        refusals it answers itself after the log up to here, so a WebSocket's acks keep their order."""
        return self.next_seq - 1

    async def info(self) -> SessionStats:
        """Status for GET /v1/sessions/{id} and /metrics."""
        return SessionStats(
            session_id=self.session_id,
            tenant=self.tenant,
            model=self.model_name,
            state=self.state,
            ended=self.ended,
            end_reason=self.end_reason,
            chunks=self.next_chunk,
            effective_fps=self._effective_fps(),
            gen_ms=list(self.gen_ms),
            viewers=self.pollers,
        )

    def _effective_fps(self) -> float:
        t = self.chunk_times
        if len(t) < 2 or not self.ring:
            return 0.0
        return (len(t) - 1) * self.ring[-1].meta["frames"] / max(1e-6, t[-1] - t[0])

    async def touch(self) -> None:
        """A viewer is present (keeps the idle timeout away)."""
        self.last_activity = time.monotonic()

    async def stop(self, reason: str = "deleted") -> str | None:
        """End the session (idempotent); returns its end reason once `session_ended` is in the log and the group is back."""
        await self._end(reason)
        return self.end_reason

    # ---- ending -------------------------------------------------------------------------
    async def _end(self, reason: str) -> None:
        if self.session is not None and not self.ended:
            await asyncio.to_thread(self.session.stop, reason)
            await asyncio.to_thread(self.session.join, 30.0)
        if not self.ended:
            # The runtime did not report the end (it never started, or its thread is stuck).
            self._add_message(event_message("session_ended", reason=reason))
        await self._finalize(self.end_reason or reason)

    async def _watch(self) -> None:
        """End on idle timeout (no viewer, poll or command) or on the tenant's session time limit."""
        while not self.ended:
            await asyncio.sleep(WATCH_PERIOD_S)
            now = time.monotonic()
            if time.time() - self.created_at > self.max_session_s:
                await self._end("time_limit")
            elif self.pollers == 0 and now - self.last_activity > self.idle_timeout_s:
                await self._end("idle_timeout")

    async def _finalize(self, reason: str | None, start_failed: bool = False) -> None:
        """Give the group back (rebuilt if broken), then linger and exit. Runs once."""
        if self._finalized:
            if self._final_done is not None:
                await asyncio.shield(self._final_done)
            return
        self._finalized = True
        self._final_done = asyncio.get_running_loop().create_future()
        try:
            await self._finalize_once(reason, start_failed)
        finally:
            self._final_done.set_result(None)

    async def _finalize_once(self, reason: str | None, start_failed: bool) -> None:
        self.ended = True
        self.end_reason = self.end_reason or reason
        if self.session is not None:
            await asyncio.to_thread(self.session.join, 30.0)
        broken = None
        if self.engine is not None and self.engine.failure:
            broken = self.engine.failure
        try:
            registry = await get_actor(self.registry_name, NAMESPACE)
            if registry is None:
                raise ValueError(f"no registry {self.registry_name!r}")
            await registry.session_finished.remote(self.session_id, self.end_reason, broken)
        except Exception as exc:  # noqa: BLE001 - registry gone at shutdown: nothing to return to
            logger.warning("session %s could not report its end to the registry: %s", self.session_id, exc)
        self._notify()
        if not start_failed:
            asyncio.ensure_future(self._exit_later())

    async def _exit_later(self) -> None:
        await asyncio.sleep(self.linger_s)
        # Objects this actor put die with it: only now, after viewers had time to drain them.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
