"""The autoscaled pool (deployments/pools.py) on the real local Ray cluster: real placement groups and shard workers.

The pool is driven directly from the test (lease, release, a queue length it reads), as the
registry drives it, so each test sees one mechanism: growth under a queued session, shrinking
after the idle delay (never below min_groups, never a leased group), a build waiting for a node
that blocks no other build and is given up after its placement timeout, and what describe shows.
Every wait is on the observed condition with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import ray

from deployments.config import ServingConfig
from deployments.pools import Pools

pytestmark = pytest.mark.e2e

TINY = {"height": 128, "width": 128, "pyramid_steps": [1, 1, 1]}


def config(tiny_path, top: dict | None = None, **tiny_fields) -> ServingConfig:
    """helios-tiny (TP=1, with `tiny_fields`) and a 2-slot test-pattern; `top`: more top-level settings."""
    models = {
        "helios-tiny": {"kind": "helios", "path": str(tiny_path), "tp_size": 1, "cpus_per_worker": 0.25, "options": TINY,
                        **tiny_fields},
        "test-pattern": {"kind": "test-pattern", "pool_size": 2},
    }
    return ServingConfig.model_validate({"app_name": "pool-test", "models": models, **(top or {})})


class Harness:
    """A Pools as the registry holds it: background tasks, a queue length, admissions counted."""

    def __init__(self, cfg: ServingConfig):
        self.tasks: set[asyncio.Future] = set()
        self.queued = {m: 0 for m in cfg.models}
        self.slot_events: list[tuple[str, float]] = []
        self.pools = Pools(cfg, self._spawn, lambda m: self.slot_events.append((m, time.monotonic())),
                           queued=lambda m: self.queued[m])

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def pool(self, model: str = "helios-tiny"):
        return self.pools.by_model[model]

    def states(self, model: str = "helios-tiny") -> list[str]:
        return sorted(g.state for g in self.pools.describe(self.queued)[model].groups)

    def describe_node_ids(self, model: str) -> list[str | None]:
        return [g.node_id for g in self.pools.describe(self.queued)[model].groups]


async def until(predicate, timeout: float, what: str, poll: float = 0.1):
    """Wait for `predicate()` to hold (its value), failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(poll)
    return value


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 600))


def test_describe_shows_each_group_with_its_node_and_session(ray_cluster, tiny_pipeline_dir):
    async def scenario():
        h = Harness(config(tiny_pipeline_dir, pool_size=1))
        h.pools.start()
        try:
            assert h.states() == ["building"]
            await until(lambda: h.pools.has_free("helios-tiny"), 300, "the first group warm")
            node = ray.get_runtime_context().get_node_id()
            desc = h.pools.describe(h.queued)
            tiny, pattern = desc["helios-tiny"], desc["test-pattern"]
            assert (tiny.min_groups, tiny.max_groups, tiny.target, tiny.queued) == (1, 1, 1, 0)
            [group] = tiny.groups
            assert group.state == "free" and group.node_id == node and group.session_id is None
            assert group.group_id.startswith("pool-test-helios-tiny-")
            assert [g.state for g in pattern.groups] == ["free", "free"] and pattern.groups[0].group_id is None
            leased = h.pools.lease("helios-tiny", "s1")
            assert leased.node_id == node and leased.warmup_s > 0
            assert [(g.state, g.session_id) for g in h.pools.describe(h.queued)["helios-tiny"].groups] == [("leased", "s1")]
            stats = h.pool().stats(0)
            assert stats["warmup_last_s"] == pytest.approx(leased.warmup_s) and stats["scale_ups"] == 0
            h.pools.release("helios-tiny", "s1", broken="rank 0 died")  # destroyed; the fixed pool builds another
            assert "building" in h.states()
            await until(lambda: h.pools.has_free("helios-tiny"), 300, "the replacement group warm")
            assert h.states() == ["free"] and h.pools.rebuilt == 1
        finally:
            await h.pools.close()
        assert h.states() == []

    run(scenario())


def test_the_pool_grows_for_a_queued_session_and_shrinks_back_after_the_idle_delay(ray_cluster, tiny_pipeline_dir):
    delay = 2.0
    cfg = config(tiny_pipeline_dir, min_groups=1, max_groups=2, headroom=0, scale_down_delay_s=delay)

    async def scenario():
        h = Harness(cfg)
        h.pools.start()
        try:
            await until(lambda: h.pools.has_free("helios-tiny"), 300, "min_groups warm")
            h.pools.lease("helios-tiny", "a")
            assert h.pool().building == 0  # leased 1 + headroom 0 = target 1: nothing to build

            h.queued["helios-tiny"] = 1  # a session waits: the registry says so
            queued_at = time.monotonic()
            assert h.pools.rebalance("helios-tiny") is None
            assert h.states() == ["building", "leased"] and h.pool().stats(1)["target"] == 2
            await until(lambda: h.pools.has_free("helios-tiny"), 300, "a second group for the queued session")
            grown_s = time.monotonic() - queued_at
            h.queued["helios-tiny"] = 0
            h.pools.lease("helios-tiny", "b")  # the registry admits it
            assert h.pool().scale_ups == 1 and h.states() == ["leased", "leased"]

            # max_groups: a third session waiting builds nothing more
            h.queued["helios-tiny"] = 1
            h.pools.rebalance("helios-tiny")
            assert h.pool().building == 0
            h.queued["helios-tiny"] = 0

            h.pools.release("helios-tiny", "a", broken=None)
            h.pools.release("helios-tiny", "b", broken=None)
            released_at = time.monotonic()
            assert h.states() == ["free", "free"]  # not yet idle for `delay`
            await until(lambda: h.pool().scale_downs == 1, 30, "one idle group destroyed")
            shrunk_s = time.monotonic() - released_at
            assert h.states() == ["free"]  # down to min_groups (target 1), not below
            logging.getLogger(__name__).info("grew in %.1fs, shrank after %.1fs (delay %.1fs)", grown_s, shrunk_s, delay)
            print(f"\nscale-up (queued -> group free) {grown_s:.1f}s, scale-down observed after {shrunk_s:.2f}s "
                  f"(scale_down_delay_s {delay}), warm-up last {h.pool().stats(0)['warmup_last_s']:.2f}s")
            assert delay <= shrunk_s < delay + 10
            assert h.pools.rebalance("helios-tiny") is None and h.states() == ["free"]  # min_groups holds
        finally:
            await h.pools.close()

    run(scenario())


def test_a_group_waiting_for_a_node_blocks_no_other_build_and_times_out_logged(ray_cluster, tiny_pipeline_dir, caplog):
    """GPU bundles on a cluster without GPUs: the build waits (as for a node the autoscaler adds), is reported
    building, other models still build, and it gives up after placement_timeout_s and asks again."""
    models = {
        "gpu": {"kind": "helios", "path": str(tiny_pipeline_dir), "tp_size": 2, "cpus_per_worker": 0.1,
                "gpus_per_worker": 1, "placement_timeout_s": 1.0, "options": TINY},
        "cpu": {"kind": "helios", "path": str(tiny_pipeline_dir), "tp_size": 1, "cpus_per_worker": 0.25, "options": TINY},
    }
    cfg = ServingConfig.model_validate({"app_name": "pool-pending", "models": models})

    async def scenario():
        h = Harness(cfg)
        caplog.set_level(logging.WARNING, logger="deployments.pools")
        h.pools.start()
        try:
            await until(lambda: h.pools.has_free("cpu"), 300, "the cpu model's group warm while the gpu one waits")
            assert h.states("gpu") == ["building"]
            await until(lambda: h.pool("gpu").placement_timeouts >= 1, 60, "the gpu group's placement timeout")
            assert "no node took its 2 bundles" in h.pool("gpu").last_error
            assert any("asking again" in r.getMessage() for r in caplog.records)
            assert h.states("gpu") == ["building"]  # still wanted: asked for again after the back-off
            assert h.describe_node_ids("gpu") == [None]
        finally:
            await h.pools.close()
        pending = [pg for pg in ray.util.placement_group_table().values()
                   if pg["name"].startswith("helios-group-pool-pending-") and pg["state"] != "REMOVED"]
        assert pending == []  # close removed the waiting placement group

    run(scenario())


def test_the_registry_grows_the_pool_for_a_queued_session_admits_it_and_shrinks_back(ray_cluster, tiny_pipeline_dir):
    """Through the registry actor: a second session queues, the pool builds a group for it, the session is
    admitted on it; both end and the pool goes back to min_groups after the idle delay."""
    from deployments.protocol import SessionStatus
    from deployments.registry import get_or_create_registry
    from tests.serve.conftest import wait_for

    delay = 2.0
    top = {"app_name": "pool-registry", "tenants": [{"name": "t", "api_keys": ["t-key-0123456789abcdef"]}],
           "queue_size": 2, "spare_session_actors": 0, "session_linger_s": 0}
    cfg = config(tiny_pipeline_dir, top, min_groups=1, max_groups=2, headroom=0, scale_down_delay_s=delay)
    registry = get_or_create_registry(cfg)
    try:
        ray.get(registry.wait_warm.remote(300), timeout=330)
        first = ray.get(registry.create_session.remote("t", "helios-tiny", None), timeout=120)
        assert first.status is SessionStatus.ACTIVE
        queued_at = time.monotonic()
        second = ray.get(registry.create_session.remote("t", "helios-tiny", None), timeout=60)
        assert second.status is SessionStatus.QUEUED and second.position == 1
        sid = second.session.session_id
        wait_for(lambda: ray.get(registry.get_session.remote(sid)).status is SessionStatus.ACTIVE, 300, "the queued session admitted")
        admitted_s = time.monotonic() - queued_at
        desc = ray.get(registry.describe_pools.remote())["helios-tiny"]
        assert sorted((g.state, g.session_id) for g in desc.groups) == sorted(
            [("leased", first.session.session_id), ("leased", sid)])
        assert desc.target == 2 and desc.queued == 0
        stats = ray.get(registry.stats.remote())["models"]["helios-tiny"]
        assert stats["scale_ups"] == 1 and stats["warmup_last_s"] > 0
        ending_at = time.monotonic()  # the first group is free from its release on, during this call
        for s in (first.session.session_id, sid):
            ray.get(registry.end_session.remote(s), timeout=120)
        wait_for(lambda: ray.get(registry.stats.remote())["models"]["helios-tiny"]["scale_downs"] == 1, 60,
                 "one idle group destroyed")
        shrunk_s = time.monotonic() - ending_at
        assert [g.state for g in ray.get(registry.describe_pools.remote())["helios-tiny"].groups] == ["free"]
        print(f"\nregistry: queued -> admitted {admitted_s:.1f}s (warm-up {stats['warmup_last_s']:.1f}s), "
              f"first end asked -> scaled down {shrunk_s:.1f}s (scale_down_delay_s {delay})")
        assert delay <= shrunk_s < delay + 60  # not before the delay (its clock starts at the release, inside the call)
    finally:
        ray.get(registry.shutdown.remote(exit_actor=True), timeout=120)
