"""How many shard groups a model's pool should hold, and which idle ones to retire: pure arithmetic, no Ray.

The pool (deployments/pools.py) asks `ScalingPolicy.plan` on every lease, release and
queue change and on a periodic tick, then applies the answer: start `build` group builds,
destroy the groups named in `retire`. Keeping the rule here lets it be tested without a
cluster and read in one place (docs/pool.md).

    target = clamp(leased + headroom + queued, min_groups, max_groups)

Builds start while free + leased + building < target (a build that is still waiting for
a node counts: it is capacity on its way). Free groups idle past `scale_down_delay_s` are
retired, longest idle first, while free + leased > target; a leased group never is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deployments.config import ModelSpec


@dataclass(frozen=True)
class ScalePlan:
    """What the pool should do now."""

    target: int
    """Groups the pool should hold (free + leased + building)."""
    build: int
    """Group builds to start."""
    retire: list[str]
    """Free groups (ids) to destroy, longest idle first."""
    recheck_in_s: float | None
    """When a free group above target becomes old enough to retire (ask again then); None: nothing pending."""


@dataclass(frozen=True)
class ScalingPolicy:
    """One model's bounds, headroom and idle delay (from its `ModelSpec`)."""

    min_groups: int
    max_groups: int
    headroom: int
    scale_down_delay_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_groups <= self.max_groups:
            raise ValueError(f"min_groups ({self.min_groups}) must be between 0 and max_groups ({self.max_groups})")
        if self.headroom < 0 or self.scale_down_delay_s < 0:
            raise ValueError(f"headroom ({self.headroom}) and scale_down_delay_s ({self.scale_down_delay_s}) must be >= 0")

    @classmethod
    def of(cls, spec: ModelSpec) -> "ScalingPolicy":
        low, high = spec.group_bounds()
        return cls(min_groups=low, max_groups=high, headroom=spec.headroom, scale_down_delay_s=spec.scale_down_delay_s)

    @property
    def fixed(self) -> bool:
        """min == max: the pool never grows or shrinks (a plain `pool_size`)."""
        return self.min_groups == self.max_groups

    def target(self, leased: int, queued: int) -> int:
        """Groups wanted: every leased one, one per queued session, plus the headroom, within the bounds."""
        return max(self.min_groups, min(self.max_groups, leased + self.headroom + queued))

    def plan(self, *, leased: int, building: int, queued: int, idle_since: Mapping[str, float], now: float) -> ScalePlan:
        """The builds to start and the idle groups to retire.

        `idle_since`: each free group's id -> when it became free (same clock as `now`).
        """
        target = self.target(leased, queued)
        free = len(idle_since)
        build = max(0, target - (free + leased + building))
        surplus = free + leased - target
        if surplus <= 0:
            return ScalePlan(target, build, [], None)
        by_age = sorted(idle_since.items(), key=lambda item: (item[1], item[0]))  # longest idle first
        retire = [gid for gid, since in by_age if now - since >= self.scale_down_delay_s][:surplus]
        waiting = [since for gid, since in by_age if gid not in retire]
        recheck = None
        if len(retire) < surplus and waiting:
            recheck = max(0.0, waiting[0] + self.scale_down_delay_s - now)
        return ScalePlan(target, build, retire, recheck)


def pick_node(
    totals: Mapping[str, Mapping[str, float]],
    used: Mapping[str, Mapping[str, float]],
    held: Mapping[str, int],
    need: Mapping[str, float],
) -> str | None:
    """The node for a new group: of those whose resources still fit one (`totals` minus what our
    groups `used`), the one holding fewest of our groups (`held`); ties by id. None when none fits.

    `totals`: alive node id -> its resources; `need`: the whole group's resources (every bundle).
    Spreading groups means one node loss takes the fewest sessions; the answer is only a soft
    preference for Ray (deployments/shard.py), never a constraint.
    """
    def fits(node: str) -> bool:
        room = totals[node]
        taken = used.get(node, {})
        return all(room.get(r, 0.0) - taken.get(r, 0.0) >= amount - 1e-9 for r, amount in need.items())

    candidates = [n for n in totals if fits(n)]
    return min(candidates, key=lambda n: (held.get(n, 0), n), default=None)
