"""The pools of one app: per model, its warm shard groups (or plain slots for models without one).

Owned by the registry actor (the groups' placement groups are scoped to it). A pool
builds its groups in the background, retrying a failed build after a back-off (a group
is capacity), leases one per session, and takes it back whole, or destroys and rebuilds
it when the session reports it broken.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from deployments.config import ModelSpec, ServingConfig, resolve_model_path
from deployments.model_factory import model_factory_for
from deployments.naming import shard_group_id
from deployments.protocol import PoolStats
from deployments.shard import ShardGroup, create_shard_group, destroy_shard_group

logger = logging.getLogger(__name__)

REBUILD_BACKOFF_S = 5.0
"""Wait before building again after a failed group build."""
WARM_POLL_S = 0.2


@dataclass
class ModelPool:
    """The slots of one model; a slot is a warm `ShardGroup`, or None for a model without one."""

    spec: ModelSpec
    free: list[ShardGroup | None] = field(default_factory=list)
    leased: dict[str, ShardGroup | None] = field(default_factory=dict)
    """Session id -> its slot."""
    building: int = 0
    failed_builds: int = 0
    model_path: str | None = None
    last_error: str | None = None

    def warm(self) -> bool:
        """Every slot built (free or leased)."""
        return self.building == 0 and len(self.free) + len(self.leased) >= self.spec.pool_size

    def ready(self) -> bool:
        """At least one slot built (free or leased): a session is admitted now or as soon as one ends.

        Readiness, not warmth: `warm()` waits for every slot, this for the first one.
        """
        return bool(self.free or self.leased)

    def stats(self, queued: int) -> PoolStats:
        return PoolStats(free=len(self.free), leased=len(self.leased), building=self.building, queued=queued,
                         failed_builds=self.failed_builds, last_error=self.last_error, ready=self.ready())

    def groups(self) -> list[ShardGroup]:
        return [s for s in list(self.free) + list(self.leased.values()) if s is not None]


class Pools:
    """Every model's pool of one app.

    `spawn` runs a background coroutine (the registry's task set); `on_slot(model)` is
    called whenever a slot of `model` may have become free, so the registry admits the
    next queued session.
    """

    def __init__(self, config: ServingConfig, spawn: Callable[[Coroutine], None], on_slot: Callable[[str], None]):
        self.config = config
        self.by_model: dict[str, ModelPool] = {m: ModelPool(spec) for m, spec in config.models.items()}
        self.closed = False
        self.rebuilt = 0
        self._spawn = spawn
        self._on_slot = on_slot
        self._started = False
        self._path_lock = asyncio.Lock()
        self._destroying: set[asyncio.Future] = set()

    def start(self) -> None:
        """Fill every pool (idempotent): plain slots at once, shard groups in the background."""
        if self._started:
            return
        self._started = True
        for model, pool in self.by_model.items():
            if model_factory_for(pool.spec).needs_group:
                for _ in range(pool.spec.pool_size):
                    self._spawn(self._build(model))
            else:
                pool.free = [None] * pool.spec.pool_size

    async def wait_warm(self, timeout_s: float) -> None:
        """Return once every pool is fully built, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(p.warm() for p in self.by_model.values()):
            await asyncio.sleep(WARM_POLL_S)

    def lease(self, model: str, session_id: str) -> ShardGroup | None:
        """Give a free slot of `model` to `session_id` (the caller checked `has_free`)."""
        pool = self.by_model[model]
        slot = pool.free.pop(0)
        pool.leased[session_id] = slot
        return slot

    def has_free(self, model: str) -> bool:
        return bool(self.by_model[model].free)

    def release(self, model: str, session_id: str, broken: str | None) -> bool:
        """Take `session_id`'s slot back; a broken group is destroyed and rebuilt. True when rebuilt."""
        pool = self.by_model[model]
        if session_id not in pool.leased:
            return False
        slot = pool.leased.pop(session_id)
        if broken and slot is not None:
            logger.warning("group %s is broken (%s): rebuilding it", slot.group_id, broken)
            self._destroy(slot)
            self.rebuilt += 1
            if not self.closed:
                self._spawn(self._build(model))
            return True
        if self.closed:
            if slot is not None:
                self._destroy(slot)
        else:
            pool.free.append(slot)
        return False

    def _destroy(self, group: ShardGroup) -> None:
        """Destroy `group` in a worker thread (placement-group removal is a blocking GCS call); `close` awaits it."""
        task = asyncio.ensure_future(asyncio.to_thread(destroy_shard_group, group))
        self._destroying.add(task)
        task.add_done_callback(self._destroying.discard)

    async def close(self) -> None:
        """Build no more and destroy every group (at shutdown), off the event loop; returns when all are gone."""
        self.closed = True
        for pool in self.by_model.values():
            for group in pool.groups():
                self._destroy(group)
            pool.free.clear()
            pool.leased.clear()
        if self._destroying:
            await asyncio.wait(list(self._destroying))

    def group_workers(self, group_id: str) -> list[Any]:
        """Worker handles of a group (tests and operators: inspect or kill a rank)."""
        for pool in self.by_model.values():
            for group in pool.groups():
                if group.group_id == group_id:
                    return list(group.workers)
        raise ValueError(f"group_id {group_id!r}: no such shard group")

    async def _build(self, model: str) -> None:
        pool = self.by_model[model]
        spec = pool.spec
        pool.building += 1
        try:
            while not self.closed:
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
                if self.closed:
                    await asyncio.to_thread(destroy_shard_group, group)
                    return
                logger.info("shard group %s is warm", group.group_id)
                pool.free.append(group)
                return
        finally:
            pool.building -= 1
            self._on_slot(model)
