"""The session registry: admission, tenant quotas, the queue and the pools of warm shard groups.

A single named, detached asyncio actor, so admission state survives front-door replica
restarts and every replica sees the same queue. It owns the shard groups (their
placement groups are scoped to it) and creates each session actor detached with its own
scheduling strategy, so no replica or placement group captures it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve

from deployments.config import ServingConfig, resolve_model_path
from deployments.model_factory import model_factory_for
from deployments.naming import NAMESPACE, RELAY_DEPLOYMENT, registry_actor_name, session_actor_name, shard_group_id
from deployments.protocol import (
    Admission,
    NoCapacity,
    QuotaExceeded,
    RegistryStats,
    SessionRecord,
    SessionStartFailed,
    SessionStatus,
    ShuttingDown,
    UnknownModel,
    cause_of,
)
from deployments.session_actor import SessionActor
from deployments.shard import ShardGroup, create_shard_group, destroy_shard_group

logger = logging.getLogger(__name__)

ENDED_KEPT = 1000
"""Ended sessions remembered for GET (their end reason)."""
REBUILD_BACKOFF_S = 5.0
APP_WATCH_PERIOD_S = 3.0


@dataclass
class _Pool:
    """The slots of one model: warm shard groups, or plain slots (test-pattern)."""

    free: list[ShardGroup | None] = field(default_factory=list)
    leased: dict[str, ShardGroup | None] = field(default_factory=dict)  # session id -> slot
    building: int = 0
    failed_builds: int = 0
    model_path: str | None = None
    last_error: str | None = None


class SessionRegistry:
    """Admission controller and owner of every session and shard group of one Serve app."""

    def __init__(self, config: ServingConfig):
        self.config = config
        self.name = registry_actor_name(config.app_name)
        self.sessions: dict[str, SessionRecord] = {}
        self.ended: OrderedDict[str, SessionRecord] = OrderedDict()
        self.queues: dict[str, deque[str]] = {m: deque() for m in config.models}
        self.pools: dict[str, _Pool] = {m: _Pool() for m in config.models}
        self.counters = {"sessions_created": 0, "sessions_rejected": 0, "sessions_failed": 0, "groups_rebuilt": 0}
        self._started = False
        self._shutting_down = False
        self._tasks: set[asyncio.Future] = set()
        self._path_lock = asyncio.Lock()

    # ---- background --------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_started(self) -> None:
        if self._started:
            return
        self._started = True
        for name, spec in self.config.models.items():
            pool = self.pools[name]
            if spec.kind == "test-pattern":
                pool.free = [None] * spec.pool_size
            else:
                for _ in range(spec.pool_size):
                    self._spawn(self._build_group(name))

    async def ready(self, watch_app: bool = False) -> dict:
        """Start the pools (idempotent); with `watch_app`, end everything once the Serve app is deleted."""
        self._ensure_started()
        if watch_app and not getattr(self, "_watching", False):
            self._watching = True
            self._spawn(self._watch_app())
        return await self.stats()

    async def wait_warm(self, timeout_s: float = 300.0) -> dict:
        """Wait until every pool is fully built (tests and benchmarks); returns stats."""
        self._ensure_started()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.building == 0 and len(p.free) + len(p.leased) >= self.config.models[m].pool_size for m, p in self.pools.items()):
                break
            await asyncio.sleep(0.2)
        return await self.stats()

    async def _build_group(self, model: str) -> None:
        spec = self.config.models[model]
        pool = self.pools[model]
        pool.building += 1
        try:
            while not self._shutting_down:
                try:
                    async with self._path_lock:  # one writer of a preset checkpoint, however many groups build
                        if pool.model_path is None:
                            pool.model_path = await asyncio.to_thread(resolve_model_path, spec, self.config.cache_dir)
                    group = await create_shard_group(
                        shard_group_id(self.config.app_name, model, uuid.uuid4().hex[:8]),
                        pool.model_path,
                        tp_size=spec.tp_size,
                        device=spec.device,
                        dtype=spec.dtype,
                        cpus_per_worker=spec.cpus_per_worker,
                        overrides=spec.pipeline_overrides(),
                    )
                except Exception as exc:  # noqa: BLE001 - keep trying: a group is capacity
                    pool.failed_builds += 1
                    pool.last_error = f"{type(exc).__name__}: {exc}"
                    logger.error("building a shard group for %s failed: %s", model, pool.last_error)
                    await asyncio.sleep(REBUILD_BACKOFF_S)
                    continue
                if self._shutting_down:
                    destroy_shard_group(group)
                    return
                logger.info("shard group %s is warm", group.group_id)
                pool.free.append(group)
                return
        finally:
            pool.building -= 1
            self._admit_waiting(model)

    async def _watch_app(self) -> None:
        """Serve does not stop detached actors: end the sessions ourselves when the app goes away."""
        misses = 0
        while not self._shutting_down:
            await asyncio.sleep(APP_WATCH_PERIOD_S)
            try:
                apps = (await asyncio.to_thread(serve.status)).applications
                alive = self.config.app_name in apps and str(apps[self.config.app_name].status) != "DELETING"
            except Exception as exc:  # noqa: BLE001 - no Serve controller: the app is gone
                logger.debug("serve.status failed (%s): counting the app as gone", exc)
                alive = False
            misses = 0 if alive else misses + 1
            if misses >= 2:
                logger.info("Serve app %s is gone: shutting down its sessions", self.config.app_name)
                await self.shutdown("server_shutdown", exit_actor=True)
                return

    # ---- admission ---------------------------------------------------------------------
    def _live_of(self, tenant: str) -> int:
        return sum(1 for r in self.sessions.values() if r.tenant == tenant)

    async def create_session(self, tenant: str, model: str, seed: int | None) -> Admission:
        """Admit (ACTIVE) or queue (QUEUED + position) a new session; raises when it is refused.

        Raises ShuttingDown, UnknownModel, QuotaExceeded, NoCapacity (queue full) or
        SessionStartFailed (the model did not start on its group).
        """
        self._ensure_started()
        retry = self.config.retry_after_s
        if self._shutting_down:
            raise ShuttingDown("server: the server is shutting down", retry_after_s=retry)
        if model not in self.config.models:
            raise UnknownModel(f"model: {model!r} is not offered; choose one of {sorted(self.config.models)}")
        quota = self.config.quota_of(tenant)
        if self._live_of(tenant) >= quota.max_concurrent_sessions:
            self.counters["sessions_rejected"] += 1
            raise QuotaExceeded(
                f"tenant {tenant!r} already holds {quota.max_concurrent_sessions} sessions (max_concurrent_sessions)", retry_after_s=retry
            )
        pool, queue = self.pools[model], self.queues[model]
        has_free = bool(pool.free) and not queue
        if not has_free and len(queue) >= self.config.queue_size:
            self.counters["sessions_rejected"] += 1
            raise NoCapacity(f"model: all {model!r} groups are busy and the queue is full", retry_after_s=retry)
        sid = uuid.uuid4().hex
        rec = SessionRecord(sid, tenant, model, secrets.token_urlsafe(18), seed, actor_name=session_actor_name(sid))
        self.sessions[sid] = rec
        self.counters["sessions_created"] += 1
        if has_free:
            rec.status = SessionStatus.STARTING
            if not await self._launch(rec, pool.free.pop(0)):
                raise SessionStartFailed(f"session: session could not start: {rec.end_reason}", retry_after_s=retry)
            return Admission(SessionStatus.ACTIVE, rec.public())
        queue.append(sid)
        return Admission(SessionStatus.QUEUED, rec.public(len(queue)), position=len(queue))

    def _admit_waiting(self, model: str) -> None:
        pool, queue = self.pools[model], self.queues[model]
        while pool.free and queue and not self._shutting_down:
            rec = self.sessions.get(queue.popleft())
            if rec is None or rec.status is not SessionStatus.QUEUED:
                continue
            rec.status = SessionStatus.STARTING
            self._spawn(self._launch(rec, pool.free.pop(0)))

    async def _launch(self, rec: SessionRecord, slot: ShardGroup | None) -> bool:
        """Create the session actor on `slot` and start it; on failure the slot is returned."""
        self.pools[rec.model].leased[rec.session_id] = slot
        rec.group_id = slot.group_id if slot is not None else None
        cfg = self.config
        spec = cfg.models[rec.model]
        actor = None
        try:
            actor = (
                ray.remote(SessionActor)
                .options(
                    name=rec.actor_name,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    num_cpus=0,
                    max_restarts=0,
                    max_concurrency=1000,
                    # Never inherit a caller's placement group (pitfall: capture by the replica's group).
                    scheduling_strategy="DEFAULT",
                )
                .remote(
                    rec.session_id,
                    rec.tenant,
                    rec.model,
                    spec,
                    slot,
                    model_factory=model_factory_for(spec),
                    seed=rec.seed,
                    registry_name=self.name,
                    ring_size=cfg.ring_size,
                    message_log_size=cfg.message_log_size,
                    idle_timeout_s=cfg.idle_timeout_s,
                    max_session_s=cfg.quota_of(rec.tenant).max_session_s,
                    linger_s=cfg.session_linger_s,
                )
            )
            await actor.start.remote()
        except Exception as exc:  # noqa: BLE001 - report as an ended session, never crash admission
            logger.error("session %s failed to start: %s", rec.session_id, exc)
            self.counters["sessions_failed"] += 1
            await self.session_finished(rec.session_id, f"error: failed to start: {cause_of(exc)}", None)
            if actor is not None:
                ray.kill(actor, no_restart=True)
            return False
        if rec.status is SessionStatus.STARTING:
            rec.status = SessionStatus.ACTIVE
        self._spawn(self._start_recording(rec.session_id))
        return True

    async def _start_recording(self, session_id: str) -> None:
        """Ask the relay to write recording.mp4 from the first chunk on (best effort)."""
        try:
            handle = await asyncio.to_thread(serve.get_deployment_handle, RELAY_DEPLOYMENT, self.config.app_name)
            await handle.start_recording.remote(session_id)
        except Exception as exc:  # noqa: BLE001 - no relay: no recording, the session still runs
            logger.info("no recording for session %s: %s", session_id, exc)

    async def session_finished(self, session_id: str, reason: str | None, broken: str | None) -> None:
        """Called by a session actor (or on a failed start): free its slot, rebuild a broken group, admit the next."""
        rec = self.sessions.pop(session_id, None)
        if rec is None:
            return
        rec.end(reason)
        self._remember(rec)
        pool = self.pools[rec.model]
        if session_id in pool.leased:
            slot = pool.leased.pop(session_id)
            if broken and slot is not None:
                logger.warning("group %s is broken (%s): rebuilding it", slot.group_id, broken)
                destroy_shard_group(slot)
                self.counters["groups_rebuilt"] += 1
                if not self._shutting_down:
                    self._spawn(self._build_group(rec.model))
            elif self._shutting_down:
                if slot is not None:
                    destroy_shard_group(slot)
            else:
                pool.free.append(slot)
        self._admit_waiting(rec.model)

    def _remember(self, rec: SessionRecord) -> None:
        self.ended[rec.session_id] = rec
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

    # ---- queries and deletion ------------------------------------------------------------
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """A copy of the record (with queue position while queued), or None when unknown."""
        rec = self.sessions.get(session_id) or self.ended.get(session_id)
        if rec is None:
            return None
        position = list(self.queues[rec.model]).index(session_id) + 1 if rec.status is SessionStatus.QUEUED else None
        return rec.public(position)

    async def end_session(self, session_id: str, reason: str = "deleted") -> SessionRecord | None:
        """DELETE: leave the queue, or stop the actor (which emits session_ended and frees its group)."""
        rec = self.sessions.get(session_id)
        if rec is None:
            return await self.get_session(session_id)
        if rec.status is SessionStatus.QUEUED:
            if session_id in self.queues[rec.model]:
                self.queues[rec.model].remove(session_id)
            self.sessions.pop(session_id, None)
            rec.end(reason)
            self._remember(rec)
            return rec.public()
        try:
            actor = ray.get_actor(rec.actor_name, namespace=NAMESPACE)
            await asyncio.wait_for(actor.stop.remote(reason), timeout=60)
        except Exception as exc:  # noqa: BLE001 - a dead actor cannot report: end it here
            logger.warning("stopping session %s: %s", session_id, exc)
            await self.session_finished(session_id, reason, None)
        rec = self.ended.get(session_id) or rec
        return rec.public()

    async def group_workers(self, group_id: str) -> list:
        """Worker handles of a group (tests and operators: inspect or kill a rank)."""
        for pool in self.pools.values():
            for slot in list(pool.free) + list(pool.leased.values()):
                if slot is not None and slot.group_id == group_id:
                    return list(slot.workers)
        raise ValueError(f"group_id {group_id!r}: no such shard group")

    async def stats(self) -> RegistryStats:
        """Counts for /metrics and /healthz."""
        tenants: dict[str, dict[str, int]] = {}
        for r in self.sessions.values():
            t = tenants.setdefault(r.tenant, {"active": 0, "queued": 0})
            t["queued" if r.status is SessionStatus.QUEUED else "active"] += 1
        models = {
            m: {
                "free": len(p.free),
                "leased": len(p.leased),
                "building": p.building,
                "queued": len(self.queues[m]),
                "failed_builds": p.failed_builds,
                "last_error": p.last_error,
            }
            for m, p in self.pools.items()
        }
        return {
            "tenants": tenants,
            "models": models,
            "sessions": {sid: {"tenant": r.tenant, "model": r.model, "status": r.public().status.value} for sid, r in self.sessions.items()},
            "counters": dict(self.counters),
            "shutting_down": self._shutting_down,
        }

    async def shutdown(self, reason: str = "server_shutdown", exit_actor: bool = False) -> dict:
        """End every session with `reason`, free every group; with `exit_actor` the registry then exits."""
        self._shutting_down = True
        for model, queue in self.queues.items():
            while queue:
                sid = queue.popleft()
                rec = self.sessions.pop(sid, None)
                if rec is not None:
                    rec.end(reason)
                    self._remember(rec)
        active = [r for r in self.sessions.values()]
        await asyncio.gather(*(self.end_session(r.session_id, reason) for r in active), return_exceptions=True)
        for pool in self.pools.values():
            for slot in list(pool.free) + list(pool.leased.values()):
                if slot is not None:
                    destroy_shard_group(slot)
            pool.free.clear()
            pool.leased.clear()
        ended = len(active)
        if exit_actor:
            asyncio.get_running_loop().call_later(0.2, self._kill_self)
        return {"ended_sessions": ended}

    def _kill_self(self) -> None:
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def get_or_create_registry(config: ServingConfig) -> Any:
    """The app's registry handle, creating it (detached, unplaced) on first use."""
    return (
        ray.remote(SessionRegistry)
        .options(
            name=registry_actor_name(config.app_name),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=1000,
            scheduling_strategy="DEFAULT",
        )
        .remote(config)
    )
