"""The session registry: admission, tenant quotas, the queue, and the sessions of one app.

A single named, detached asyncio actor, so admission state survives front-door replica
restarts and every replica sees the same queue. It holds the pools of shard groups
(deployments/pools.py) and creates each session actor detached with its own scheduling
strategy, so no replica or placement group captures it.

It survives its own crash or the loss of its node: Ray restarts it (`max_restarts=-1`),
and the new incarnation reads back what the old one wrote to the GCS key-value store on
every change (deployments/registry_state.py: sessions, queues, set-up commands, ended
records, counters, reader leases, groups by name) and takes its detached groups back.
Calls that are safe to run twice are retried by Ray across the restart
(`max_task_retries=-1`); `create_session` is made so by its `request_id`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

import ray
from ray import serve

from deployments.app_watch import AppWatcher
from deployments.config import ServingConfig
from deployments.detached import start_detached
from deployments.lookup import ActorCache, get_actor
from deployments.naming import (
    NAMESPACE,
    RELAY_DEPLOYMENT,
    registry_actor_name,
    registry_state_namespace,
    session_actor_name,
)
from deployments.pools import WARM_POLL_S, Pools
from deployments.protocol import (
    Admission,
    CommandQueued,
    NoCapacity,
    QueuedCommandsFull,
    QuotaExceeded,
    SessionEnded,
    SessionNotFound,
    SessionRecord,
    SessionStartFailed,
    SessionStatus,
    ShuttingDown,
    UnknownModel,
    cause_of,
)
from deployments.protocol_pool import RegistryStats
from deployments.readers import ReaderTable, RegistryReaders, new_viewer_token
from deployments.registry_queries import RegistryQueries
from deployments.registry_recovery import RETRIED, RegistryRecovery
from deployments.registry_state import GcsKeyValue, KeyValue, RegistryStore
from deployments.shard import ShardGroup
from deployments.spares import SpareActors, assignment_for, create_session_actor, session_actor_args
from deployments.watchdog import Pinger, RegistryWatchdog

logger = logging.getLogger(__name__)

ENDED_KEPT = 1000
"""Ended sessions remembered for GET (their end reason)."""
STOP_TIMEOUT_S = 60.0


class SessionRegistry(RegistryReaders, RegistryRecovery, RegistryWatchdog, RegistryQueries, AppWatcher):
    """Admission controller and owner of every session and shard group of one Serve app."""

    def __init__(self, config: ServingConfig, kv: KeyValue | None = None):
        """`kv`: where the state is kept; by default Ray's GCS key-value store (a test may pass a MemoryKeyValue)."""
        self.config = config
        self.name = registry_actor_name(config.app_name)
        self.sessions: dict[str, SessionRecord] = {}
        self.ended: OrderedDict[str, SessionRecord] = OrderedDict()
        self.queues: dict[str, deque[str]] = {m: deque() for m in config.models}
        self.pending: dict[str, list[dict]] = {}
        """Queued session id -> its set-up commands, handed to its actor at admission (deployments/setup_commands.py)."""
        self._launching: dict[str, asyncio.Event] = {}
        """Sessions between leaving the queue and their actor's start: set once started (or failed)."""
        self.counters = {"sessions_created": 0, "sessions_rejected": 0, "sessions_failed": 0}
        self._shutting_down = False
        self._watching = False
        self._tasks: set[asyncio.Future] = set()
        self.pools = Pools(config, self._spawn, self._admit_waiting, queued=lambda m: len(self.queues[m]))
        self.spares = SpareActors(config, self.name, self._spawn)
        self._spare_of: dict[str, Any] = {}
        """Admitted session id -> the spare actor it takes (until its start)."""
        self.readers = ReaderTable()
        self._status_changed = asyncio.Event()
        """Set (and replaced) whenever a session leaves the queue or ends: wakes `wait_admitted` callers."""
        self._request_of: dict[str, str] = {}
        """Live session id -> the `request_id` that created it (a retried create answers the same session)."""
        self.restored_at: float | None = None
        self._pinger = Pinger()
        self._session_actors = ActorCache(NAMESPACE)
        self._ending: set[str] = set()
        self._watchdog_on = False
        self.store = RegistryStore(kv or GcsKeyValue(registry_state_namespace(config.app_name)), ENDED_KEPT)
        restored = self._restore(self.store.load())
        self.store.attach(self._snapshot)
        if restored:
            self._resume()

    def _notify_status(self) -> None:
        """Wake every `wait_admitted` long poll (each checks its own session and sleeps again if unchanged)."""
        self._status_changed.set()
        self._status_changed = asyncio.Event()

    # ---- background --------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_pools(self) -> None:
        """Fill the pools and the spare actors (idempotent)."""
        self.pools.start()
        if not self._shutting_down:
            self.spares.start()
        if not self._watchdog_on:
            self._watchdog_on = True
            self._spawn(self._watchdog())

    @RETRIED
    async def ready(self, watch_app: bool = False) -> RegistryStats:
        """Start the pools (idempotent); with `watch_app`, end everything once the Serve app is deleted."""
        self._start_pools()
        if watch_app and not self._watching:
            self._watching = True
            self._persist()
            self._spawn(self._watch_app())
        return await self.stats()

    @RETRIED
    async def wait_warm(self, timeout_s: float = 300.0) -> RegistryStats:
        """Wait until every pool is fully built and every spare actor parked (tests and benchmarks); returns stats."""
        self._start_pools()
        deadline = time.monotonic() + timeout_s
        await self.pools.wait_warm(timeout_s)
        while not self.spares.full() and time.monotonic() < deadline:
            await asyncio.sleep(WARM_POLL_S)  # a poll period of this wait, not a synchronisation
        return await self.stats()

    # ---- admission ---------------------------------------------------------------------
    def _live_of(self, tenant: str) -> int:
        return sum(1 for r in self.sessions.values() if r.tenant == tenant)

    @RETRIED
    async def create_session(self, tenant: str, model: str, seed: int | None, request_id: str | None = None) -> Admission:
        """Admit (ACTIVE) or queue (QUEUED + position) a new session; raises when it is refused.

        Raises ShuttingDown, UnknownModel, QuotaExceeded, NoCapacity (queue full) or
        SessionStartFailed (the model did not start on its group). A call with the
        `request_id` of a live session answers that session (a retry after a restart).
        """
        self._start_pools()
        retry = self.config.retry_after_s
        again = next((sid for sid, rid in self._request_of.items() if request_id is not None and rid == request_id), None)
        if again is not None:
            return await self._admission_of(self.sessions[again])
        if self._shutting_down:
            raise ShuttingDown("server: the server is shutting down", retry_after_s=retry)
        if model not in self.config.models:
            raise UnknownModel(f"model: {model!r} is not offered; choose one of {sorted(self.config.models)}")
        quota = self.config.quota_of(tenant)
        if self._live_of(tenant) >= quota.max_concurrent_sessions:
            self.counters["sessions_rejected"] += 1
            self._persist()
            raise QuotaExceeded(
                f"tenant {tenant!r} already holds {quota.max_concurrent_sessions} sessions (max_concurrent_sessions)", retry_after_s=retry
            )
        queue = self.queues[model]
        has_free = self.pools.has_free(model) and not queue
        if not has_free and len(queue) >= self.config.queue_size:
            self.counters["sessions_rejected"] += 1
            self._persist()
            raise NoCapacity(f"model: all {model!r} groups are busy and the queue is full", retry_after_s=retry)
        spare = self.spares.take(model) if has_free else None
        sid = spare[0] if spare is not None else uuid.uuid4().hex
        if spare is not None:
            self._spare_of[sid] = spare[1]
        rec = SessionRecord(sid, tenant, model, new_viewer_token(), seed, actor_name=session_actor_name(sid))
        self.sessions[sid] = rec
        if request_id is not None:
            self._request_of[sid] = request_id
        self.counters["sessions_created"] += 1
        if has_free:
            self._starting(rec)
            if not await self._launch(rec):
                raise SessionStartFailed(f"session: session could not start: {rec.end_reason}", retry_after_s=retry)
            return Admission(SessionStatus.ACTIVE, rec.public())
        queue.append(sid)
        self.pools.rebalance(model)  # a queued session may grow the pool (within max_groups)
        self._persist()
        await self.store.persisted()  # a 202 means the queue entry survives a registry crash
        return Admission(SessionStatus.QUEUED, rec.public(len(queue)), position=len(queue))

    async def _admission_of(self, rec: SessionRecord) -> Admission:
        """The answer a retried `create_session` gets: the session its first attempt made."""
        launching = self._launching.get(rec.session_id)
        if launching is not None:
            await launching.wait()
        if rec.status is SessionStatus.QUEUED:
            position = self._position(rec)
            return Admission(SessionStatus.QUEUED, rec.public(position), position=position)
        if rec.status is SessionStatus.ENDED:
            raise SessionStartFailed(f"session: session could not start: {rec.end_reason}", retry_after_s=self.config.retry_after_s)
        return Admission(SessionStatus.ACTIVE, rec.public())

    def _admit_waiting(self, model: str) -> None:
        """Start queued sessions of `model` while it has free slots."""
        queue = self.queues[model]
        while self.pools.has_free(model) and queue and not self._shutting_down:
            rec = self.sessions.get(queue.popleft())
            if rec is None or rec.status is not SessionStatus.QUEUED:
                continue
            self._starting(rec)
            self._spawn(self._launch(rec))
            self._notify_status()
        self._persist()

    def _starting(self, rec: SessionRecord) -> None:
        """Leave the queue with a slot leased (here, not in the launch task: the caller's `has_free` check
        must still hold for the next queued session); from now on commands go to the actor, none are kept."""
        slot: ShardGroup | None = self.pools.lease(rec.model, rec.session_id)
        rec.group_id = slot.group_id if slot is not None else None
        rec.status = SessionStatus.STARTING
        self._launching[rec.session_id] = asyncio.Event()

    async def queue_command(self, session_id: str, cmd: dict) -> CommandQueued | None:
        """Keep a set-up command of a queued session for its admission; None once it left the queue
        (then its actor has started, or failed to: send the command to it as to any session).

        Raises SessionNotFound, SessionEnded, or QueuedCommandsFull over `max_queued_commands`.
        """
        rec = self.sessions.get(session_id)
        if rec is None:
            gone = self.ended.get(session_id)
            if gone is None:
                raise SessionNotFound(f"session_id: no session {session_id!r}")
            raise SessionEnded(f"session_id: session has ended ({gone.end_reason})", end_reason=gone.end_reason)
        if rec.status is SessionStatus.QUEUED:
            kept = self.pending.setdefault(session_id, [])
            most = self.config.max_queued_commands
            if len(kept) >= most:
                raise QueuedCommandsFull(
                    f"command: {len(kept)} commands already wait for this queued session; the max_queued_commands "
                    f"limit is {most} (they are applied at admission; send more once it is active)"
                )
            kept.append(cmd)
            self._persist()
            await self.store.persisted()  # its 202 means the command survives a registry crash
            return CommandQueued(position=self._position(rec), queued=len(kept))
        launching = self._launching.get(session_id)
        if launching is not None:
            await launching.wait()
        return None

    def _position(self, rec: SessionRecord) -> int | None:
        if rec.status is not SessionStatus.QUEUED or rec.session_id not in self.queues[rec.model]:
            return None
        return list(self.queues[rec.model]).index(rec.session_id) + 1

    async def _launch(self, rec: SessionRecord) -> bool:
        """Create the session actor on its leased slot and start it (with the commands kept while it
        was queued); on failure the slot is returned."""
        try:
            return await self._launch_once(rec)
        finally:
            launching = self._launching.pop(rec.session_id, None)
            if launching is not None:
                launching.set()
            if not self._shutting_down:
                self.spares.start()  # replace a spare it took, now that it started

    async def _launch_once(self, rec: SessionRecord) -> bool:
        pending = self.pending.pop(rec.session_id, [])
        slot = self.pools.slot_of(rec.model, rec.session_id)
        self._persist()
        await self.store.persisted()  # the lease is stored before any actor uses the group: never leased twice
        if self.sessions.get(rec.session_id) is not rec:  # ended (deleted, shut down) while it was stored
            spare = self._spare_of.pop(rec.session_id, None)
            if spare is not None:
                ray.kill(spare, no_restart=True)
            return False
        assignment = assignment_for(self.config, rec.tenant, slot, rec.seed, rec.created_at)
        actor = self._spare_of.pop(rec.session_id, None)
        try:
            if actor is not None:  # a spare, already up: it becomes this session
                try:
                    started = await actor.start.remote(pending, assignment)
                except ray.exceptions.RayActorError as exc:  # it died while parked: start a new actor instead
                    logger.warning("spare actor of session %s is gone (%s): starting a new one", rec.session_id, exc)
                    actor = None
            if actor is None:
                actor = create_session_actor(
                    session_actor_args(self.config, self.name, rec.session_id, rec.model, assignment),
                    self.config.control_plane_resources,
                )
                started = await actor.start.remote(pending)
        except Exception as exc:  # noqa: BLE001 - report as an ended session, never crash admission
            logger.error("session %s failed to start: %s", rec.session_id, exc)
            self.counters["sessions_failed"] += 1
            await self.session_finished(rec.session_id, f"error: failed to start: {cause_of(exc)}", None)
            if actor is not None:
                ray.kill(actor, no_restart=True)
            return False
        rec.node_id = started.node_id
        if rec.status is SessionStatus.STARTING:
            rec.status = SessionStatus.ACTIVE
            self._persist()
        self._spawn(self._start_recording(rec.session_id))
        return True

    async def _start_recording(self, session_id: str) -> None:
        """Ask the relay to write recording.mp4 from the first chunk on (best effort)."""
        try:
            handle = await asyncio.to_thread(serve.get_deployment_handle, RELAY_DEPLOYMENT, self.config.app_name)
            await handle.start_recording.remote(session_id)
        except Exception as exc:  # noqa: BLE001 - no relay: no recording, the session still runs
            logger.info("no recording for session %s: %s", session_id, exc)

    @RETRIED
    async def session_finished(self, session_id: str, reason: str | None, broken: str | None) -> None:
        """Called by a session actor (or on a failed start): free its slot, rebuild a broken group, admit the next."""
        rec = self._end_record(session_id, reason)
        if rec is not None:
            self._give_back(rec, broken)

    def _end_record(self, session_id: str, reason: str | None) -> SessionRecord | None:
        """The session is over: its record ended (its quota free, its readers dropped), waiters woken."""
        rec = self.sessions.pop(session_id, None)
        if rec is None:
            return None
        rec.end(reason)
        self._session_actors.forget(rec.actor_name)  # handles of live sessions only (docs/soak.md)
        self._remember(rec)
        self.readers.drop_session(session_id)
        self._notify_status()
        self._persist()
        return rec

    def _give_back(self, rec: SessionRecord, broken: str | None) -> None:
        """Its slot back to the pool (a broken group rebuilt), and the next queued session admitted."""
        self.pools.release(rec.model, rec.session_id, broken)
        self._admit_waiting(rec.model)
        self._persist()

    def _remember(self, rec: SessionRecord) -> None:
        self._request_of.pop(rec.session_id, None)
        self.ended[rec.session_id] = rec
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

    # ---- deletion (queries: deployments/registry_queries.py) ----------------------------------
    @RETRIED
    async def end_session(self, session_id: str, reason: str = "deleted") -> SessionRecord | None:
        """DELETE: leave the queue, or stop the actor (which emits session_ended and frees its group)."""
        rec = self.sessions.get(session_id)
        if rec is None:
            return await self.get_session(session_id)
        if rec.status is SessionStatus.QUEUED:
            if session_id in self.queues[rec.model]:
                self.queues[rec.model].remove(session_id)
                self.pools.rebalance(rec.model)
            self.sessions.pop(session_id, None)
            self.pending.pop(session_id, None)
            rec.end(reason)
            self._remember(rec)
            self._notify_status()
            self._persist()
            return rec.public()
        try:
            actor = await get_actor(rec.actor_name, NAMESPACE)
            if actor is None:
                raise ValueError(f"no actor {rec.actor_name!r}")
            await asyncio.wait_for(actor.stop.remote(reason), timeout=STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a dead actor cannot report: end it here
            logger.warning("stopping session %s: %s", session_id, exc)
            await self.session_finished(session_id, reason, None)
        rec = self.ended.get(session_id) or rec
        return rec.public()

    async def shutdown(self, reason: str = "server_shutdown", exit_actor: bool = False) -> int:
        """End every session with `reason`, free every group; with `exit_actor` the registry then exits.

        Returns how many running sessions it ended.
        """
        self._shutting_down = True
        self.pools.closed = True  # slots given back from now on are destroyed, not reused
        self.spares.close()
        for model, queue in self.queues.items():
            while queue:
                sid = queue.popleft()
                rec = self.sessions.pop(sid, None)
                self.pending.pop(sid, None)
                if rec is not None:
                    rec.end(reason)
                    self._remember(rec)
        self._notify_status()
        active = list(self.sessions.values())
        await asyncio.gather(*(self.end_session(r.session_id, reason) for r in active), return_exceptions=True)
        await self.pools.close()
        await self.store.clear()  # shut down on purpose: a registry made later starts empty
        if exit_actor:
            asyncio.get_running_loop().call_later(0.2, self._kill_self)
        return len(active)

    def _kill_self(self) -> None:
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def get_or_create_registry(config: ServingConfig) -> Any:
    """The app's registry handle, creating it (deployments/detached.py) on first use.

    Unlike session actors it is restarted by Ray after a crash or its node's loss (and reads
    its state back); only the methods marked RETRIED are sent again after a restart."""
    return start_detached(
        SessionRegistry, registry_actor_name(config.app_name), config, resources=config.control_plane_resources,
        get_if_exists=True, max_restarts=-1,
    )
