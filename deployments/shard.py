"""Tensor-parallel shard groups: N `ShardWorker` actors in one placement group, one TP rank each.

Every rank holds a `HeliosStreamPipeline` built with the group's process group (gloo on
CPU, NCCL on GPU) and receives the same calls in the same order (SPMD). Activations
never leave the group: only the calls go in and rank 0's chunk comes out.
`ShardGroupEngine` wraps a group as a `StreamEngine`, so `HeliosModel` runs unchanged.

A chunk is begun on every rank (`begin`: its latents) and collected from rank 0 alone
(`collect`, in its own concurrency group, so it can wait for the frames while the next
chunk is begun). Rank 0 puts the frames into the object store itself and returns only the
reference: the one copy of a chunk in the store is that one, and the session hands the
same reference on to the relay.

Nothing of a group is owned by the registry process that builds it: the placement group
is detached and named, every rank a named detached actor, so a group outlives a registry
crash and the restarted registry finds it again by its names (`reacquire_shard_group`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from deployments.naming import NAMESPACE, placement_group_name, shard_worker_name
from helios.pipeline.engine import ChunkResult

logger = logging.getLogger(__name__)


class ShardGroupError(RuntimeError):
    """A rank of the shard group died or failed; the group must be rebuilt."""


class PlacementTimeout(TimeoutError):
    """A new group's placement group found no node for its bundles in time (it was removed)."""


@dataclass
class RemoteChunk:
    """Rank 0's answer to `collect`: the chunk's frames stay in the object store (one copy)."""

    chunk: int
    frames_ref: list
    """[ObjectRef] of the uint8 (frames, H, W, 3) array rank 0 put (a list: Ray passes it on as a ref)."""
    prompt: str
    seed: int
    timings_ms: dict[str, float]


@ray.remote(max_restarts=0, concurrency_groups={"collect": 1, "prefetch": 1})
class ShardWorker:
    """One TP rank: owns its slice of the model and runs the pipeline calls it is sent."""

    def __init__(self, rank: int, world_size: int, group_id: str):
        self.rank = rank
        self.world_size = world_size
        self.group_id = group_id
        self.pipe = None
        self._begun: dict[int, Any] = {}  # rank 0: begun chunks by ticket, until collected
        self._tickets = 0

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port (rank 0's become the rendezvous address)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def node_id(self) -> str:
        """Ray id (hex) of the node this rank runs on (rank 0's is the group's node)."""
        return ray.get_runtime_context().get_node_id()

    def setup(self, master_addr: str, master_port: int, model_path: str, dtype: str, device: str, overrides: dict) -> dict:
        """Join the process group (collective: all ranks at once) and load this rank's shard."""
        import torch

        from helios.pipeline import HeliosStreamPipeline

        tp_group = None
        if self.world_size > 1:
            from helios.parallel import init_tp_group

            backend = "nccl" if device == "cuda" else "gloo"
            tp_group = init_tp_group(
                self.rank, self.world_size, master_addr=master_addr, master_port=master_port, backend=backend
            )
        t0 = time.perf_counter()
        self.pipe = HeliosStreamPipeline.from_pretrained(
            model_path, tp_group=tp_group, dtype=getattr(torch, dtype), device=device,
            decode_frames=self.rank == 0, **overrides  # only rank 0's frames leave the group
        )
        logger.info("group %s rank %d loaded in %.1fs", self.group_id, self.rank, time.perf_counter() - t0)
        return self.geometry()

    def geometry(self) -> dict:
        """Static facts the engine proxy caches."""
        p = self.pipe
        return {"height": p.height, "width": p.width, "frames_per_chunk": p.frames_per_chunk, "fps": p.fps,
                "chunks_in_flight": p.chunks_in_flight}

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        """Run one pipeline method; only rank 0 returns its result (the others return None)."""
        result = getattr(self.pipe, method)(*args, **kwargs)
        return result if self.rank == 0 else None

    def begin(self) -> tuple[int, int] | None:
        """Begin the next chunk on this rank (collective); rank 0 returns (ticket for `collect`, chunk index)."""
        handle = self.pipe.begin_chunk()
        if self.rank != 0:
            return None  # only rank 0's frames leave the group
        self._tickets += 1
        self._begun[self._tickets] = handle
        return self._tickets, handle.chunk

    @ray.method(concurrency_group="collect")
    def collect(self, ticket: int) -> RemoteChunk:
        """Rank 0: wait for a begun chunk's frames and put them into the object store, once."""
        result = self._begun.pop(ticket).result()
        ref = ray.put(np.ascontiguousarray(result.frames, dtype=np.uint8))
        return RemoteChunk(chunk=result.chunk, frames_ref=[ref], prompt=result.prompt, seed=result.seed,
                           timings_ms=result.timings_ms)

    @ray.method(concurrency_group="prefetch")
    def prefetch(self, prompt: str) -> None:
        """Queue a prompt for background encoding (never waits for the chunk being generated)."""
        self.pipe.prefetch_prompt(prompt)

    def worker_id(self) -> str:
        """This worker's Ray id (tests compare it with the owner of the frames' object refs)."""
        return ray.get_runtime_context().get_worker_id()

    def get(self, attr: str) -> Any:
        """Read a pipeline attribute (no collective involved)."""
        return getattr(self.pipe, attr)

    def pid(self) -> int:
        """OS process id (tests kill it to simulate a crash)."""
        return os.getpid()

    def memory_report(self, trim: bool = False, objects: bool = False, trace: bool = False) -> dict:
        """What this rank holds (helios.runtime.memdebug; the soak asks it: docs/soak.md)."""
        from helios.runtime.memdebug import memory_report

        return {**memory_report(trim, objects, trace), "begun": len(self._begun)}


@dataclass
class ShardGroup:
    """Handles of one warm group, as passed to the session actor that leases it."""

    group_id: str
    workers: list[Any]
    geometry: dict
    pg: PlacementGroup | None = field(default=None, repr=False)
    node_id: str | None = None
    """Ray node id (hex) of rank 0; every rank is on it (STRICT_PACK)."""
    warmup_s: float | None = None
    """Placement group ready -> model loaded on every rank."""


def group_bundle(cpus_per_worker: float, gpus_per_worker: float) -> dict[str, float]:
    """One rank's placement-group bundle (Ray refuses an empty one: a token CPU then)."""
    bundle = {"CPU": cpus_per_worker} if cpus_per_worker else {}
    if gpus_per_worker:
        bundle["GPU"] = gpus_per_worker
    return bundle or {"CPU": 0.01}


async def create_shard_group(
    group_id: str,
    model_path: str,
    *,
    tp_size: int,
    device: str,
    dtype: str,
    cpus_per_worker: float,
    overrides: dict,
    gpus_per_worker: float | None = None,
    node_hint: str | None = None,
    placement_timeout_s: float | None = None,
    on_placed: Callable[[str], None] | None = None,
) -> ShardGroup:
    """Reserve the placement group, start the ranks, rendezvous them and load the model.

    The group's bundles are STRICT_PACK (one node, never spanning two); `node_hint` is a
    soft preference for that node (Ray places it elsewhere when the node is full or gone,
    and a pending group still makes the autoscaler add a node). Raises PlacementTimeout
    when no node takes the bundles within `placement_timeout_s`. `on_placed(node_id)` is
    called once rank 0 runs, before the model loads.
    """
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if device == "cuda" else 0.0)
    bundle = group_bundle(cpus_per_worker, gpus)
    pg = placement_group(
        [dict(bundle) for _ in range(tp_size)], strategy="STRICT_PACK", name=placement_group_name(group_id),
        _soft_target_node_id=node_hint, lifetime="detached",
    )
    try:
        try:
            await asyncio.wait_for(_await(pg.ready()), placement_timeout_s)
        except TimeoutError:
            raise PlacementTimeout(
                f"group {group_id}: no node took its {tp_size} bundles of {bundle} within {placement_timeout_s:.0f}s"
            ) from None
        ready_at = time.monotonic()
        workers = [
            ShardWorker.options(
                name=shard_worker_name(group_id, i),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=bundle.get("CPU", 0),
                num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            ).remote(i, tp_size, group_id)
            for i in range(tp_size)
        ]
        (master_addr, master_port), node_id = await _gather([workers[0].address.remote(), workers[0].node_id.remote()])
        if on_placed is not None:
            on_placed(node_id)
        geometries = await _gather([w.setup.remote(master_addr, master_port, model_path, dtype, device, overrides) for w in workers])
    except BaseException:
        await asyncio.to_thread(remove_placement_group, pg)  # a GCS round trip: off the registry's loop
        raise
    warmup_s = time.monotonic() - ready_at
    logger.info("group %s warm on node %s in %.1fs (placement group ready -> loaded)", group_id, node_id, warmup_s)
    return ShardGroup(group_id=group_id, workers=workers, geometry=geometries[0], pg=pg, node_id=node_id, warmup_s=warmup_s)


async def _gather(refs: list) -> list:
    """Await all refs, failing as soon as any fails (a dead rank must not leave us waiting on the others)."""
    futures = [asyncio.ensure_future(_await(r)) for r in refs]
    try:
        for done in asyncio.as_completed(futures):
            await done
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return [f.result() for f in futures]


async def _await(ref):
    return await ref


def reacquire_shard_group(group_id: str, tp_size: int, geometry: dict, node_id: str | None = None) -> ShardGroup | None:
    """The group `group_id` found by its names (a restarted registry), or None when its placement
    group or any rank is gone; then whatever is left of it is removed. Blocking (GCS round trips)."""
    from ray.util import get_placement_group

    try:
        pg = get_placement_group(placement_group_name(group_id))
    except ValueError:  # Ray's answer for "no placement group by that name"
        pg = None
    workers = []
    for rank in range(tp_size):
        try:
            workers.append(ray.get_actor(shard_worker_name(group_id, rank), namespace=NAMESPACE))
        except ValueError:  # no such (live) actor
            workers.append(None)
    if pg is not None and all(w is not None for w in workers):
        return ShardGroup(group_id=group_id, workers=workers, geometry=geometry, pg=pg, node_id=node_id)
    logger.warning("group %s: %s gone after the registry restarted: removing the rest", group_id,
                   "its placement group" if pg is None else "a rank")
    destroy_shard_group(ShardGroup(group_id=group_id, workers=[w for w in workers if w is not None], geometry=geometry, pg=pg))
    return None


def remove_stray_groups(name_prefixes: list[str], keep: set[str]) -> list[str]:
    """Remove the placement groups named with one of `name_prefixes` but not in `keep` (groups a dead
    registry was still building: nobody holds them); their ranks die with them. Blocking."""
    from ray.util import get_placement_group, placement_group_table

    removed = []
    for info in placement_group_table().values():
        name = info.get("name") or ""
        if info.get("state") == "REMOVED" or name in keep or not any(name.startswith(p) for p in name_prefixes):
            continue
        try:
            remove_placement_group(get_placement_group(name))
        except ValueError:  # removed meanwhile
            continue
        removed.append(name)
    return removed


def destroy_shard_group(group: ShardGroup) -> None:
    """Kill the ranks and free the placement group (idempotent, never raises)."""
    for w in group.workers:
        try:
            ray.kill(w, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - never raise while tearing down; say why a rank may linger
            logger.warning("group %s: killing a shard worker failed: %s", group.group_id, exc)
    if group.pg is not None:
        try:
            remove_placement_group(group.pg)
        except Exception as exc:  # noqa: BLE001 - as above
            logger.warning("group %s: removing its placement group failed: %s", group.group_id, exc)


class GroupChunk:
    """A chunk begun on every rank; `result()` fetches rank 0's frames from the object store (zero-copy)."""

    def __init__(self, engine: "ShardGroupEngine", chunk: int, collect_ref):
        self.chunk = chunk
        self._engine = engine
        self._collect = collect_ref
        self._result: ChunkResult | None = None

    def result(self) -> ChunkResult:
        if self._result is None:
            remote: RemoteChunk = self._engine._wait([self._collect], "collect")[0]
            frames = ray.get(remote.frames_ref[0])  # read-only view of the store's copy: no second copy
            self._result = ChunkResult(chunk=remote.chunk, frames=frames, prompt=remote.prompt, seed=remote.seed,
                                       timings_ms=remote.timings_ms, frames_ref=remote.frames_ref[0])
        return self._result


class ShardGroupEngine:
    """`StreamEngine` over a shard group: each call goes to every rank, rank 0's answer comes back."""

    def __init__(self, group: ShardGroup, *, call_timeout_s: float = 600.0):
        self.group = group
        self.height = group.geometry["height"]
        self.width = group.geometry["width"]
        self.frames_per_chunk = group.geometry["frames_per_chunk"]
        self.fps = group.geometry["fps"]
        self.chunks_in_flight = int(group.geometry["chunks_in_flight"])
        self.call_timeout_s = call_timeout_s
        self.failure: str | None = None
        """Why the group broke (None while healthy); the session reports it to the registry."""

    def _all(self, method: str, *args, **kwargs) -> Any:
        if self.failure:
            raise ShardGroupError(self.failure)
        return self._wait([w.call.remote(method, args, kwargs) for w in self.group.workers], method)[0]

    def _wait(self, refs: list, method: str) -> list:
        """Every rank's answer (refs[i] from rank i); the first failure breaks the group (bad input excepted)."""
        if self.failure:
            raise ShardGroupError(self.failure)
        pending = list(refs)
        deadline = time.monotonic() + self.call_timeout_s
        # Wait one by one so the first failed rank surfaces at once (its peers would hang in a collective).
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self.failure = f"shard group {self.group.group_id}: {method} timed out after {self.call_timeout_s:.0f}s"
                raise ShardGroupError(self.failure)
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                rank = refs.index(ready[0])
                self.failure = f"shard worker rank {rank} of group {self.group.group_id} died ({type(exc).__name__})"
                raise ShardGroupError(self.failure) from None
            except ray.exceptions.RayTaskError as exc:
                rank = refs.index(ready[0])
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, ValueError):
                    raise cause from None  # bad user input reached the pipeline: not a group failure
                self.failure = f"shard worker rank {rank} of group {self.group.group_id} failed in {method}: {cause}"
                raise ShardGroupError(self.failure) from None
        return ray.get(refs)

    @property
    def chunk_index(self) -> int:
        return ray.get(self.group.workers[0].get.remote("chunk_index"))

    def reset(self, seed: int) -> None:
        self._all("reset", seed)

    def set_seed(self, seed: int) -> None:
        self._all("set_seed", seed)

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        self._all("set_prompt", prompt, blend_chunks)

    def set_image(self, image, transition="cut") -> None:
        self._all("set_image", image, transition)

    def prefetch_prompt(self, prompt: str) -> None:
        """Start the encode on every rank and return at once (a command calls this under the session lock)."""
        for w in self.group.workers:
            w.prefetch.remote(prompt)

    def begin_chunk(self) -> GroupChunk:
        ticket, chunk = self._wait([w.begin.remote() for w in self.group.workers], "begin_chunk")[0]
        return GroupChunk(self, chunk, self.group.workers[0].collect.remote(ticket))

    def next_chunk(self) -> ChunkResult:
        return self.begin_chunk().result()
