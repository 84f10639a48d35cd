"""The pools of one app: per model, its warm shard groups (or plain slots for models without one).

Held by the registry actor; the groups themselves are detached and named
(deployments/shard.py), so a restarted registry puts them back (`snapshot` / `restore`). A pool
holds between `min_groups` and `max_groups` groups and follows the target of
deployments/pool_policy.py: it is asked again on every lease, release and queue change
and on a periodic tick, starts builds when it is short and destroys groups idle past
`scale_down_delay_s` when it is above target (never a leased one). Each build is its own
task: a placement group waiting for a node (which the Ray autoscaler may be adding) is
reported as `building`, blocks no other build, and is given up after
`placement_timeout_s`, then asked for again after a back-off while still needed.
A broken group (reported by its session) is destroyed; the policy builds its replacement.
Groups are spread over nodes: each new one prefers, softly, the node holding fewest of ours.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import ray

from deployments.config import ModelSpec, ServingConfig, resolve_model_path
from deployments.model_factory import model_factory_for
from deployments.naming import placement_group_name, shard_group_id, shard_worker_name
from deployments.model_pool import Build, ModelPool
from deployments.pool_policy import pick_node
from deployments.protocol_pool import PoolDescription
from deployments.registry_state import StoredGroup
from deployments.shard import PlacementTimeout, ShardGroup, create_shard_group, destroy_shard_group, group_bundle

logger = logging.getLogger(__name__)

REBUILD_BACKOFF_S = 5.0
"""Wait before building again after a failed build (doubled per failure, up to MAX_BACKOFF_S)."""
MAX_BACKOFF_S = 60.0
WARM_POLL_S = 0.2
TICK_S = 5.0
"""Longest sleep of the scaling tick (it wakes earlier when an idle group is due, or anything changed)."""


class Pools:
    """Every model's pool of one app.

    `spawn` runs a background coroutine (the registry's task set); `on_slot(model)` is
    called whenever a slot of `model` may have become free, so the registry admits the
    next queued session; `queued(model)` is how many sessions wait for one (the policy
    builds a group for each, within max_groups).
    """

    def __init__(
        self,
        config: ServingConfig,
        spawn: Callable[[Coroutine], None],
        on_slot: Callable[[str], None],
        queued: Callable[[str], int] = lambda model: 0,
    ):
        self.config = config
        self.by_model: dict[str, ModelPool] = {
            m: ModelPool(spec, needs_group=model_factory_for(spec).needs_group) for m, spec in config.models.items()
        }
        self.closed = False
        self.rebuilt = 0
        self._spawn = spawn
        self._on_slot = on_slot
        self._queued = queued
        self._started = False
        self._path_lock = asyncio.Lock()
        self._destroying: set[asyncio.Future] = set()
        self._build_tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Fill every pool (idempotent): plain slots at once, shard groups in the background, then keep them at target."""
        if self._started:
            return
        self._started = True
        for model, pool in self.by_model.items():
            if pool.needs_group:
                self.rebalance(model, scale_up=False)
            else:
                pool.free = [None] * max(0, pool.slots() - len(pool.leased))  # restored leases hold theirs
        if any(p.needs_group for p in self.by_model.values()):
            self._spawn(self._tick())

    def snapshot(self) -> list[StoredGroup]:
        """Every built group (free or leased) by the names a restarted registry finds it by."""
        return [
            StoredGroup(model, g.group_id, placement_group_name(g.group_id),
                        [shard_worker_name(g.group_id, rank) for rank in range(len(g.workers))], g.geometry, g.node_id)
            for model, pool in self.by_model.items()
            for g in pool.groups()
        ]

    def restore(self, groups: dict[str, list[ShardGroup]], leased: dict[str, dict[str, str | None]]) -> None:
        """Put back what the registry's previous incarnation built (before `start`): per model its groups
        found again, and its sessions holding a slot (session id -> group id; None: a plain slot).
        A session whose group is gone holds nothing (the watchdog ends it); the policy builds what is missing."""
        now = time.monotonic()
        for model, pool in self.by_model.items():
            by_id = {g.group_id: g for g in groups.get(model, [])}
            for sid, group_id in leased.get(model, {}).items():
                if group_id is None and not pool.needs_group:
                    pool.leased[sid] = None
                elif group_id in by_id:
                    pool.leased[sid] = by_id.pop(group_id)
            for group in by_id.values():
                pool.free.append(group)
                pool.idle_since[group.group_id] = now  # idle from now: not retired at once after a restart

    async def wait_warm(self, timeout_s: float) -> None:
        """Return once every pool has built its target, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(p.warm(self._queued(m)) for m, p in self.by_model.items()):
            await asyncio.sleep(WARM_POLL_S)

    # ---- leases --------------------------------------------------------------------------
    def has_free(self, model: str) -> bool:
        pool = self.by_model[model]
        return len(pool.free) > len(pool.claimed)

    def claim(self, model: str, session_id: str) -> None:
        """Promise a free slot to `session_id`, whose `lease` runs later (in its launch task), so
        `has_free` does not offer the same slot twice meanwhile."""
        self.by_model[model].claimed.add(session_id)

    def slot_of(self, model: str, session_id: str) -> ShardGroup | None:
        """The slot `session_id` leased (None: a plain slot)."""
        return self.by_model[model].leased[session_id]

    def lease(self, model: str, session_id: str) -> ShardGroup | None:
        """Give a free slot of `model` to `session_id` (the caller checked `has_free`, or claimed one).

        Of the free groups, the one on the node with the fewest leased groups (so a node loss
        ends the fewest sessions), then the most recently freed (the longest idle retire first).
        """
        pool = self.by_model[model]
        pool.claimed.discard(session_id)
        leased_on = Counter(g.node_id for g in pool.leased.values() if g is not None)
        best = min(range(len(pool.free)), key=lambda i: self._lease_rank(pool, pool.free[i], leased_on), default=None)
        if best is None:
            raise RuntimeError(f"model {model!r}: lease with no free slot (has_free was not checked)")
        slot = pool.free.pop(best)
        if slot is not None:
            pool.idle_since.pop(slot.group_id, None)
        pool.leased[session_id] = slot
        self.rebalance(model)
        return slot

    @staticmethod
    def _lease_rank(pool: ModelPool, slot: ShardGroup | None, leased_on: Counter) -> tuple[int, float]:
        if slot is None:
            return 0, 0.0
        return leased_on[slot.node_id], -pool.idle_since.get(slot.group_id, 0.0)

    def release(self, model: str, session_id: str, broken: str | None) -> bool:
        """Take `session_id`'s slot back; a broken group is destroyed (the policy builds its replacement). True when broken."""
        pool = self.by_model[model]
        if session_id not in pool.leased:
            return False
        slot = pool.leased.pop(session_id)
        pool.claimed.discard(session_id)
        if broken and slot is not None:
            logger.warning("group %s is broken (%s): destroying it", slot.group_id, broken)
            pool.broken[slot.group_id] = slot
            self._destroy(slot, on_gone=lambda: pool.broken.pop(slot.group_id, None))
            self.rebuilt += 1
            self.rebalance(model)
            return True
        if self.closed:
            if slot is not None:
                self._destroy(slot)
        else:
            pool.free.append(slot)
            if slot is not None:
                pool.idle_since[slot.group_id] = time.monotonic()
            self.rebalance(model)
        return False

    def discard(self, model: str, group_id: str, why: str) -> str | None:
        """A group found dead (the watchdog): out of the pool and destroyed (the policy builds its replacement).
        Returns the session that leased it (the caller ends it); None when it was free or is not found."""
        pool = self.by_model[model]
        holder = next((sid for sid, g in pool.leased.items() if g is not None and g.group_id == group_id), None)
        if holder is not None:
            group = pool.leased.pop(holder)
        else:
            index = next((i for i, g in enumerate(pool.free) if g is not None and g.group_id == group_id), None)
            if index is None:
                return None
            group = pool.free.pop(index)
            pool.idle_since.pop(group_id, None)
        logger.warning("group %s is dead (%s): destroying it", group_id, why)
        pool.broken[group_id] = group
        self._destroy(group, on_gone=lambda: pool.broken.pop(group_id, None))
        self.rebuilt += 1
        self.rebalance(model)
        return holder

    # ---- scaling -------------------------------------------------------------------------
    def rebalance(self, model: str, *, scale_up: bool = True) -> float | None:
        """Apply the policy to `model`'s pool now: start builds, retire idle groups.

        Returns when to ask again (seconds; an idle group above target becomes due), or None.
        `scale_up=False` for the initial fill (not counted as scale-ups).
        """
        pool = self.by_model[model]
        if self.closed or not self._started or not pool.needs_group:
            return None
        # A claimed slot (a session admitted, its lease not run yet) counts as leased: the most recently
        # freed groups stand for the claims and are never offered for retirement.
        claims = len(pool.claimed)
        by_age = sorted(pool.idle_since.items(), key=lambda item: item[1])
        idle = dict(by_age[: max(0, len(by_age) - claims)])
        plan = pool.policy.plan(
            leased=len(pool.leased) + claims, building=pool.building, queued=self._queued(model), idle_since=idle,
            now=time.monotonic(),
        )
        for _ in range(plan.build):
            self._start_build(model, scale_up)
        for group_id in plan.retire:
            self._retire(pool, group_id)
        self._wake.set()
        return plan.recheck_in_s

    def _start_build(self, model: str, scale_up: bool) -> None:
        pool = self.by_model[model]
        key = uuid.uuid4().hex
        pool.builds[key] = Build(group_id=self._new_group_id(model))
        if scale_up:
            pool.scale_ups += 1
            logger.info("pool %s: scaling up (leased %d, free %d, building %d, queued %d)", model, len(pool.leased),
                        len(pool.free), pool.building, self._queued(model))
        task = asyncio.ensure_future(self._build(model, key))
        self._build_tasks.add(task)
        task.add_done_callback(self._build_tasks.discard)
        self._spawn(task)

    def _retire(self, pool: ModelPool, group_id: str) -> None:
        """Destroy a free group idle past the delay (scale-down)."""
        index = next(i for i, g in enumerate(pool.free) if g is not None and g.group_id == group_id)
        group = pool.free.pop(index)
        idle_s = time.monotonic() - pool.idle_since.pop(group_id)
        pool.scale_downs += 1
        logger.info("group %s idle for %.1fs: destroying it (scale-down)", group_id, idle_s)
        self._destroy(group)

    async def _tick(self) -> None:
        """Ask the policy again when an idle group becomes due (or every TICK_S), until closed."""
        while not self.closed:
            due = [self.rebalance(m) for m, p in self.by_model.items() if p.needs_group]
            wait = min([d for d in due if d is not None] + [TICK_S])
            self._wake.clear()  # set again by any lease, release or queue change: the wait is then recomputed
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.05))
            except TimeoutError:
                pass

    def _new_group_id(self, model: str) -> str:
        return shard_group_id(self.config.app_name, model, uuid.uuid4().hex[:8])

    def _still_needed(self, model: str) -> bool:
        """Whether the policy still wants a build besides those in flight (one of them being the asker)."""
        pool = self.by_model[model]
        target = pool.target(self._queued(model))
        return not self.closed and len(pool.free) + len(pool.leased) + pool.building - 1 < target

    async def _build(self, model: str, key: str) -> None:
        pool = self.by_model[model]
        spec = pool.spec
        build = pool.builds[key]
        backoff = REBUILD_BACKOFF_S
        try:
            while not self.closed:
                try:
                    async with self._path_lock:  # one writer of a preset checkpoint, however many groups build
                        if pool.model_path is None:
                            pool.model_path = await asyncio.to_thread(resolve_model_path, spec, self.config.cache_dir)
                    build.hint = await self._node_hint(spec)
                    group = await create_shard_group(
                        build.group_id,
                        pool.model_path,
                        tp_size=spec.tp_size,
                        device=spec.device,
                        dtype=spec.dtype,
                        cpus_per_worker=spec.cpus_per_worker,
                        gpus_per_worker=spec.worker_gpus(),
                        overrides=spec.pipeline_overrides(),
                        node_hint=build.hint,
                        placement_timeout_s=spec.placement_timeout_s,
                        on_placed=lambda node: setattr(build, "node_id", node),
                    )
                except PlacementTimeout as exc:
                    pool.placement_timeouts += 1
                    pool.last_error = str(exc)
                    logger.warning("%s (pending bundles: the autoscaler may still add a node); asking again in %.0fs",
                                   exc, backoff)
                except Exception as exc:  # noqa: BLE001 - keep trying while needed: a group is capacity
                    pool.failed_builds += 1
                    pool.last_error = f"{type(exc).__name__}: {exc}"
                    logger.error("building shard group %s for %s failed: %s; again in %.0fs", build.group_id, model,
                                 pool.last_error, backoff)
                else:
                    if self.closed:
                        await asyncio.to_thread(destroy_shard_group, group)
                        return
                    pool.warmups_s.append(group.warmup_s or 0.0)
                    del pool.warmups_s[:-256]  # a bounded history for the mean
                    pool.free.append(group)
                    pool.idle_since[group.group_id] = time.monotonic()
                    return
                await asyncio.sleep(backoff)  # the back-off of a failed build, not a synchronisation
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                if not self._still_needed(model):
                    logger.info("pool %s: a build is no longer needed after its failure; stopping it", model)
                    return
                build.group_id, build.hint, build.node_id = self._new_group_id(model), None, None
        finally:
            pool.builds.pop(key, None)
            self._on_slot(model)
            self.rebalance(model)

    async def _node_hint(self, spec: ModelSpec) -> str | None:
        """The alive node holding the fewest of our groups among those with room for one more; None when none has.

        A soft preference only (STRICT_PACK's `_soft_target_node_id`): with no node
        suggested, or the suggested one full, Ray places the group where it fits, or keeps
        it pending so the autoscaler adds a node.
        """
        nodes = await asyncio.to_thread(ray.nodes)  # a GCS call: off the registry's loop
        used: dict[str, Counter] = defaultdict(Counter)
        held: Counter = Counter()
        for pool in self.by_model.values():
            need = self._group_need(pool.spec)
            placed = [g.node_id for g in pool.groups()] + [b.node_id or b.hint for b in pool.builds.values()]
            for node in placed:
                if node:
                    used[node].update(need)
                    held[node] += 1
        totals = {n["NodeID"]: n.get("Resources", {}) for n in nodes if n.get("Alive")}
        return pick_node(totals, used, held, self._group_need(spec))

    @staticmethod
    def _group_need(spec: ModelSpec) -> Counter:
        bundle = group_bundle(spec.cpus_per_worker, spec.worker_gpus())
        return Counter({k: v * spec.tp_size for k, v in bundle.items()})

    # ---- teardown and inspection -----------------------------------------------------------
    def _destroy(self, group: ShardGroup, on_gone: Callable[[], Any] | None = None) -> None:
        """Destroy `group` in a worker thread (placement-group removal is a blocking GCS call); `close` awaits it."""
        task = asyncio.ensure_future(asyncio.to_thread(destroy_shard_group, group))
        self._destroying.add(task)
        task.add_done_callback(self._destroying.discard)
        if on_gone is not None:
            task.add_done_callback(lambda _: on_gone())

    async def close(self) -> None:
        """Build no more and destroy every group (at shutdown), off the event loop; returns when all are gone."""
        self.closed = True
        self._wake.set()
        for task in list(self._build_tasks):
            task.cancel()  # a build waiting for a node or loading removes its placement group as it stops
        for pool in self.by_model.values():
            for group in pool.groups():
                self._destroy(group)
            pool.free.clear()
            pool.leased.clear()
            pool.idle_since.clear()
        waits = list(self._destroying) + list(self._build_tasks)
        if waits:
            await asyncio.wait(waits)

    def describe(self, queued: Mapping[str, int]) -> dict[str, PoolDescription]:
        """Every model's pool (bounds, target, queue and each group's state, node and session)."""
        return {m: p.describe(queued.get(m, 0)) for m, p in self.by_model.items()}

    def group_workers(self, group_id: str) -> list[Any]:
        """Worker handles of a group (tests and operators: inspect or kill a rank)."""
        for pool in self.by_model.values():
            for group in pool.groups():
                if group.group_id == group_id:
                    return list(group.workers)
        raise ValueError(f"group_id {group_id!r}: no such shard group")
