"""The pool's scaling rule and node choice (deployments/pool_policy.py), and the config fields behind them: no Ray."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from pydantic import ValidationError

from deployments.config import ModelSpec, ServingConfig
from deployments.metrics import FrontDoorMetrics
from deployments.protocol import SessionRecord, SessionStatus
from deployments.pool_policy import ScalingPolicy, pick_node

POLICY = ScalingPolicy(min_groups=1, max_groups=4, headroom=1, scale_down_delay_s=10.0)


def plan(policy=POLICY, *, leased=0, building=0, queued=0, idle=None, now=100.0):
    return policy.plan(leased=leased, building=building, queued=queued, idle_since=idle or {}, now=now)


def test_target_is_leased_plus_headroom_plus_queued_within_bounds():
    assert POLICY.target(leased=0, queued=0) == 1
    assert POLICY.target(leased=2, queued=0) == 3
    assert POLICY.target(leased=2, queued=1) == 4
    assert POLICY.target(leased=4, queued=3) == 4  # max_groups caps it
    low = ScalingPolicy(min_groups=3, max_groups=4, headroom=0, scale_down_delay_s=1)
    assert low.target(leased=0, queued=0) == 3  # min_groups floors it


def test_builds_start_when_free_plus_leased_plus_building_is_short():
    assert plan().build == 1  # empty pool: min 1 / headroom 1
    assert plan(idle={"a": 99.0}).build == 0
    assert plan(leased=1, idle={}).build == 1  # the headroom is leased away: one more
    assert plan(leased=1, building=1).build == 0  # a build in flight (maybe waiting for a node) counts
    assert plan(leased=1, queued=2, idle={"a": 99.0}).build == 2  # a queued session asks for a group
    assert plan(leased=3, queued=5, idle={"a": 99.0}).build == 0  # never beyond max_groups


def test_idle_groups_retire_after_the_delay_longest_idle_first_down_to_target():
    idle = {"old": 50.0, "mid": 80.0, "new": 99.0}
    p = plan(idle=idle, now=100.0)  # target 1: two above it; "old" and "mid" are past 10 s, "new" is not
    assert p.build == 0 and p.retire == ["old", "mid"] and p.recheck_in_s is None
    p = plan(idle=idle, now=95.0)
    assert p.retire == ["old", "mid"]
    p = plan(idle={"a": 92.0, "b": 95.0}, now=100.0)  # one above target, not yet due
    assert p.retire == [] and p.recheck_in_s == pytest.approx(2.0)


def test_a_leased_group_is_never_retired_and_min_groups_is_kept():
    p = plan(leased=3, idle={"a": 0.0}, now=1000.0)  # target 4 = 3 + headroom: the free one is the headroom
    assert p.retire == []
    keep = ScalingPolicy(min_groups=2, max_groups=4, headroom=0, scale_down_delay_s=0)
    assert plan(keep, idle={"a": 0.0, "b": 0.0, "c": 0.0}, now=5.0).retire == ["a"]


def test_queued_sessions_keep_idle_groups_from_retiring():
    assert plan(queued=2, idle={"a": 0.0, "b": 0.0}, now=1000.0).retire == []


def test_fixed_pool_from_pool_size_alone():
    spec = ModelSpec(kind="test-pattern", pool_size=3)
    policy = ScalingPolicy.of(spec)
    assert (policy.min_groups, policy.max_groups, policy.fixed) == (3, 3, True)
    assert plan(policy, leased=3, idle={}).build == 0
    assert plan(policy, idle={"a": 0.0, "b": 0.0, "c": 0.0}, now=1e6).retire == []


def test_group_bounds_fill_in_from_pool_size():
    assert ModelSpec(kind="test-pattern", pool_size=2, max_groups=5).group_bounds() == (2, 5)
    assert ModelSpec(kind="test-pattern", pool_size=2, min_groups=4).group_bounds() == (4, 4)
    assert ModelSpec(kind="test-pattern", min_groups=0, max_groups=3).group_bounds() == (0, 3)
    spec = ModelSpec(kind="test-pattern", pool_size=2)
    assert spec.model_copy(update={"pool_size": 1}).group_bounds() == (1, 1)  # resolved at use, not stored


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_groups": 3, "max_groups": 2}, "min_groups (3) must be <= max_groups (2)"),
        ({"max_groups": 2, "headroom": 3}, "headroom (3) must be <= max_groups (2)"),
        ({"device": "cuda", "gpus_per_worker": 0}, "gpus_per_worker"),
        ({"max_groups": 0}, "max_groups"),
        ({"scale_down_delay_s": -1}, "scale_down_delay_s"),
    ],
)
def test_bad_pool_fields_are_refused_naming_the_field(fields, named):
    with pytest.raises(ValidationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(kind="test-pattern", **fields)


def test_gpus_per_worker_defaults_by_device_and_may_declare_logical_gpus_on_cpu():
    assert ModelSpec(kind="test-pattern").worker_gpus() == 0
    assert ModelSpec(kind="test-pattern", device="cuda", dtype="bfloat16").worker_gpus() == 1
    assert ModelSpec(kind="test-pattern", gpus_per_worker=1).worker_gpus() == 1  # cpu + logical GPUs


def test_pick_node_prefers_the_node_with_fewest_of_our_groups_that_has_room():
    totals = {"n1": {"CPU": 8, "GPU": 8}, "n2": {"CPU": 8, "GPU": 8}, "head": {"CPU": 4}}
    need = {"CPU": 2, "GPU": 4}
    assert pick_node(totals, {}, {}, need) == "n1"  # ties by id; the head has no GPU
    assert pick_node(totals, {"n1": {"CPU": 2, "GPU": 4}}, {"n1": 1}, need) == "n2"
    full = {"n1": {"CPU": 4, "GPU": 8}, "n2": {"CPU": 4, "GPU": 8}}
    assert pick_node(totals, full, {"n1": 2, "n2": 2}, need) is None  # no room anywhere: no hint (Ray decides)
    assert pick_node(totals, {"n1": {"GPU": 8}}, {"n1": 1, "n2": 3}, need) == "n2"  # n1 is full


# ---- the registry's view of its pools, and the pool gauges (no cluster: plain slots only) -------------
def _registry(**extra):
    from deployments.registry import SessionRegistry
    from deployments.registry_state import MemoryKeyValue

    cfg = ServingConfig.model_validate({
        "models": {"test-pattern": {"kind": "test-pattern", "pool_size": 1, "max_groups": 2}},
        "tenants": [{"name": "t", "api_keys": ["k" * 20]}],
        "queue_size": 4,
        **extra,
    })
    return SessionRegistry(cfg, kv=MemoryKeyValue())  # no cluster: its state kept in memory


def test_describe_pools_lists_slots_with_their_sessions_and_the_queue():
    async def run():
        reg = _registry()
        reg.pools.start()
        reg.pools.lease("test-pattern", "s1")
        reg.queues["test-pattern"].append("s2")
        return await reg.describe_pools()

    desc = asyncio.run(run())["test-pattern"]
    assert (desc.min_groups, desc.max_groups, desc.target, desc.queued) == (2, 2, 2, 1)  # max_groups slots
    assert sorted((g.state, g.session_id) for g in desc.groups) == [("free", None), ("leased", "s1")]
    assert all(g.group_id is None and g.node_id is None for g in desc.groups)
    as_json = dataclasses.asdict(desc)
    assert set(as_json) == {"min_groups", "max_groups", "target", "queued", "groups"}
    assert set(as_json["groups"][0]) == {"group_id", "state", "node_id", "session_id"}


def test_admitting_from_the_queue_never_offers_one_free_slot_twice():
    """Two queued sessions, one free slot: only one leaves the queue (its lease runs later, in its launch task)."""
    async def run():
        reg = _registry()
        reg.pools.start()
        reg.pools.lease("test-pattern", "busy")
        for sid in ("a" * 32, "b" * 32):
            reg.sessions[sid] = SessionRecord(sid, "t", "test-pattern", "tok", None, "x")
            reg.queues["test-pattern"].append(sid)
        launches = []
        reg._spawn = launches.append  # the launches themselves need a cluster: only count them
        reg._admit_waiting("test-pattern")
        for coro in launches:
            coro.close()
        return len(launches), [reg.sessions[s].status for s in ("a" * 32, "b" * 32)], list(reg.queues["test-pattern"])

    launches, statuses, queue = asyncio.run(run())
    assert launches == 1 and statuses == [SessionStatus.STARTING, SessionStatus.QUEUED] and queue == ["b" * 32]


def test_metrics_show_target_warmup_and_scale_events():
    stats = {"models": {"m1": {"free": 1, "leased": 2, "building": 1, "queued": 1, "failed_builds": 0, "last_error": None,
                               "ready": True, "target": 4, "scale_ups": 3, "scale_downs": 1, "placement_timeouts": 2,
                               "warmup_last_s": 12.5, "warmup_mean_s": 10.0}},
             "sessions": {}, "counters": {}, "tenants": {}}
    text = FrontDoorMetrics().render(stats, []).decode()
    for line in ('helios_shard_groups{model="m1",state="building"} 1.0', 'helios_pool_target_groups{model="m1"} 4.0',
                 'helios_pool_warmup_seconds{model="m1",stat="last"} 12.5',
                 'helios_pool_warmup_seconds{model="m1",stat="mean"} 10.0',
                 'helios_pool_events{counter="scale_up",model="m1"} 3.0',
                 'helios_pool_events{counter="scale_down",model="m1"} 1.0',
                 'helios_pool_events{counter="placement_timeout",model="m1"} 2.0'):
        assert line in text, line


def test_a_pool_that_may_be_empty_when_idle_is_ready_empty():
    from deployments.model_pool import ModelPool

    scale_to_zero = ModelPool(ModelSpec(kind="helios", preset="tiny", min_groups=0, max_groups=2, headroom=0))
    assert scale_to_zero.ready() and scale_to_zero.target(queued=1) == 1
    assert not ModelPool(ModelSpec(kind="helios", preset="tiny", min_groups=0, max_groups=2)).ready()  # headroom 1: wait for it


def test_a_claimed_free_group_is_never_retired_before_its_lease():
    """A session admitted from the queue claims a free group; its lease runs later. An idle-delay tick in
    between must not destroy the group it will take."""
    from deployments.pools import Pools
    from deployments.shard import ShardGroup

    cfg = ServingConfig.model_validate({"models": {"m": {"kind": "helios", "preset": "tiny", "min_groups": 0, "max_groups": 2,
                                                         "headroom": 0, "scale_down_delay_s": 0}}})
    pools = Pools(cfg, spawn=lambda coro: coro.close(), on_slot=lambda m: None)
    pools._started = True  # no tick, no builds: the pool is driven by hand
    pool = pools.by_model["m"]
    for gid in ("old", "new"):
        pool.free.append(ShardGroup(gid, [], {}))
        pool.idle_since[gid] = {"old": 1.0, "new": 2.0}[gid]
    pools.claim("m", "s1")
    pools._destroy = lambda group, on_gone=None: None  # no Ray here: only which groups leave the pool counts
    pools.rebalance("m")
    assert [g.group_id for g in pool.free] == ["new"] and pool.scale_downs == 1  # one idle retired, one kept for s1
    assert pools.lease("m", "s1").group_id == "new" and not pool.claimed
