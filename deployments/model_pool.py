"""One model's pool: its slots (warm shard groups, or plain slots), builds in flight, and counters.

Split out of deployments/pools.py (one job: the state of one model's pool and what follows
from it alone: target, warmth, readiness, stats and the admin view); deployments/pools.py
drives the builds, leases and scaling of every pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deployments.config import ModelSpec
from deployments.pool_policy import ScalingPolicy
from deployments.protocol_pool import GroupInfo, PoolDescription, PoolStats
from deployments.shard import ShardGroup


@dataclass
class Build:
    """A group build in flight: its placement group waits for a node, or its ranks load the model."""

    group_id: str
    hint: str | None = None
    """The node asked for (softly), counted for spreading until the group is placed."""
    node_id: str | None = None
    """Where rank 0 runs, once placed."""


@dataclass
class ModelPool:
    """The slots of one model; a slot is a warm `ShardGroup`, or None for a model without one."""

    spec: ModelSpec
    needs_group: bool = True
    policy: ScalingPolicy = field(init=False)
    free: list[ShardGroup | None] = field(default_factory=list)
    leased: dict[str, ShardGroup | None] = field(default_factory=dict)
    """Session id -> its slot."""
    builds: dict[str, Build] = field(default_factory=dict)
    """Build key -> the build in flight."""
    broken: dict[str, ShardGroup] = field(default_factory=dict)
    """Group id -> a broken group being destroyed."""
    idle_since: dict[str, float] = field(default_factory=dict)
    """Free group id -> when it became free (time.monotonic)."""
    claimed: set[str] = field(default_factory=set)
    """Sessions promised a free slot whose lease has not run yet."""
    failed_builds: int = 0
    placement_timeouts: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    warmups_s: list[float] = field(default_factory=list)
    model_path: str | None = None
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.policy = ScalingPolicy.of(self.spec)

    @property
    def building(self) -> int:
        return len(self.builds)

    def slots(self) -> int:
        """Plain slots of a model without groups: its max_groups (pool_size when unset)."""
        return self.policy.max_groups

    def target(self, queued: int) -> int:
        return self.policy.target(len(self.leased) + len(self.claimed), queued) if self.needs_group else self.slots()

    def warm(self, queued: int = 0) -> bool:
        """Every slot the target asks for is built (free or leased)."""
        return self.building == 0 and len(self.free) + len(self.leased) >= self.target(queued)

    def ready(self) -> bool:
        """At least one slot built (free or leased): a session is admitted now or as soon as one ends.

        Readiness, not warmth: `warm()` waits for every slot, this for the first one. A pool
        that may be empty when idle (min_groups 0, headroom 0) is ready empty: a session
        queues and its group is built.
        """
        return bool(self.free or self.leased) or self.target(0) == 0

    def stats(self, queued: int) -> PoolStats:
        w = self.warmups_s
        return PoolStats(
            free=len(self.free), leased=len(self.leased), building=self.building, queued=queued,
            failed_builds=self.failed_builds, last_error=self.last_error, ready=self.ready(), target=self.target(queued),
            scale_ups=self.scale_ups, scale_downs=self.scale_downs, placement_timeouts=self.placement_timeouts,
            warmup_last_s=w[-1] if w else None, warmup_mean_s=sum(w) / len(w) if w else None,
        )

    def describe(self, queued: int) -> PoolDescription:
        """Every group (or slot) with its state, node and session: the admin API's view."""
        groups = [GroupInfo(b.group_id, "building", b.node_id, None) for b in self.builds.values()]
        groups += [GroupInfo(_gid(g), "free", _node(g), None) for g in self.free]
        groups += [GroupInfo(_gid(g), "leased", _node(g), sid) for sid, g in self.leased.items()]
        groups += [GroupInfo(g.group_id, "broken", g.node_id, None) for g in self.broken.values()]
        low, high = (self.policy.min_groups, self.policy.max_groups) if self.needs_group else (self.slots(), self.slots())
        return PoolDescription(min_groups=low, max_groups=high, target=self.target(queued), queued=queued, groups=groups)

    def groups(self) -> list[ShardGroup]:
        return [s for s in list(self.free) + list(self.leased.values()) if s is not None]


def _gid(group: ShardGroup | None) -> str | None:
    return group.group_id if group is not None else None


def _node(group: ShardGroup | None) -> str | None:
    return group.node_id if group is not None else None
