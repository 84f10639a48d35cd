"""The registry's pool and stats answers: `PoolStats`, `RegistryStats` and the admin API's `PoolDescription`.

Split out of deployments/protocol.py (one job: the typed shapes of what the registry reports
about its pools and sessions to /metrics, /healthz, /readyz and GET /v1/admin/pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict


class PoolStats(TypedDict):
    """One model's slots in `RegistryStats` (a dict: it is rendered as JSON by /healthz)."""

    free: int
    leased: int
    building: int
    queued: int
    failed_builds: int
    last_error: str | None
    ready: bool
    """At least one slot built (free or leased): the model can serve sessions (readiness)."""
    target: int
    """Groups the pool aims at now (deployments/pool_policy.py): leased + headroom + queued, within min..max."""
    scale_ups: int
    """Groups added after start-up (a replacement of a broken group included)."""
    scale_downs: int
    """Idle free groups destroyed past `scale_down_delay_s`."""
    placement_timeouts: int
    """Builds whose placement group found no node within `placement_timeout_s` (asked for again after a back-off)."""
    warmup_last_s: float | None
    """Seconds from the latest group's placement group ready to its model loaded on every rank."""
    warmup_mean_s: float | None
    """Mean of the same over every group built so far."""


GroupState = Literal["building", "free", "leased", "broken"]
"""A shard group's state in `GroupInfo`: building (placement pending or model loading), free (warm, unleased),
leased (a session's), broken (failed, being destroyed)."""


@dataclass(frozen=True)
class GroupInfo:
    """One shard group (or, for a model without one, one session slot) as the admin API shows it."""

    group_id: str | None
    """None for a slot of a model without shard groups (test-pattern)."""
    state: GroupState
    node_id: str | None
    """Ray node id (hex) of rank 0; None while the group waits for a node, and for slots."""
    session_id: str | None
    """The session leasing it (state 'leased'), else None."""


@dataclass(frozen=True)
class PoolDescription:
    """Answer of `SessionRegistry.describe_pools` per model (GET /v1/admin/pool: `dataclasses.asdict` of it)."""

    min_groups: int
    max_groups: int
    target: int
    queued: int
    groups: list[GroupInfo]


class RegistryStats(TypedDict):
    """Answer of `SessionRegistry.stats` (/metrics, /healthz, /v1/models)."""

    tenants: dict[str, dict[str, int]]
    models: dict[str, PoolStats]
    sessions: dict[str, dict[str, str]]
    counters: dict[str, int]
    shutting_down: bool
    readers: dict[str, int]
    """Open reader leases and refusals per connection cap."""
    ready: bool
    """Every pool ready and the server not shutting down (GET /readyz)."""
