"""The "nothing leaked" check every fault test ends with (and test_e2e's clean-up test).

After the sessions a test started have ended, the cluster must hold exactly what the
apps' pools and spares account for, whatever the test killed on the way:

- actors: every named Helios actor (namespace `helios`) is a registry, a rank of a shard
  group its registry's pool lists (every rank of each such group alive), a live session
  of a registry, or a spare a registry still owns (a spare of a killed registry exits
  within its 2 s ownership poll);
- placement groups: every Helios placement group (`helios-group-<group id>`) belongs to a
  pool's group, and no other placement group exists beyond those at the baseline;
- reader leases: none open at any registry (a dropped viewer gave its slot back);
- relay feeds: no feed left for an ended session (every viewer's feed closed);
- object store: bytes in use back within `STORE_SLACK_MB` of the baseline (a session's
  chunks die with its actor);
- temp files: no new `helios*` entry in the temp directory and no file but
  `<session id>/recording.mp4` in the recordings folder (the only places the code writes:
  `deployments/naming.default_recording_uri`, the served app's `recording_uri`).

Each condition is waited for (things end asynchronously: a lingering actor, a rebuilt
group, the relay's feed closing); on timeout the assertion lists every problem left.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

STORE_SLACK_MB = 24.0
"""Object-store bytes allowed above the baseline (a few chunks of refs still being released)."""


@dataclass
class Baseline:
    """What the cluster held before the tests that are checked: compared against, not required."""

    store_bytes: int
    other_placement_groups: set[str]
    temp_entries: set[str]
    recordings: Path | None = None
    taken_at: float = field(default_factory=time.monotonic)


def store_bytes() -> int:
    """Bytes in use in the object store (plasma) of the whole cluster, spilled bytes included."""
    from ray._private import internal_api

    reply = internal_api.get_memory_info_reply(internal_api.get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(reply.store_stats.object_store_bytes_used + reply.store_stats.spilled_bytes_total)


def _placement_groups() -> dict[str, str]:
    """Placement groups not removed: id -> name ('' when unnamed)."""
    return {pid: (p.get("name") or "") for pid, p in ray.util.placement_group_table().items() if p["state"] != "REMOVED"}


def _temp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("helios*")}


def take_baseline(recordings: Path | None = None) -> Baseline:
    """The baseline, taken with no session running (after `Served.settle`)."""
    others = {pid for pid, name in _placement_groups().items() if not name.startswith("helios-group-")}
    return Baseline(store_bytes(), others, _temp_entries(), recordings)


def _registries() -> list:
    from deployments.naming import NAMESPACE, REGISTRY_NAME

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(REGISTRY_NAME)]
    out = []
    for name in names:
        try:
            out.append(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:  # exited meanwhile (an app being deleted)
            continue
    return out


def problems(base: Baseline) -> list[str]:
    """Everything left that nothing accounts for (empty: nothing leaked)."""
    from ray import serve

    from deployments.naming import NAMESPACE, REGISTRY_NAME, SESSION_ACTOR_PREFIX

    found: list[str] = []
    registries = _registries()
    live: set[str] = set()
    groups: dict[str, str] = {}  # pool group id -> its state (building, free, leased, broken)
    for reg in registries:
        stats = ray.get(reg.stats.remote(), timeout=60)
        live |= set(stats["sessions"])
        if stats["readers"]["open"]:
            found.append(f"{stats['readers']['open']} reader lease(s) still open: {stats['readers']}")
        for pool in ray.get(reg.describe_pools.remote(), timeout=60).values():
            for g in pool.groups:
                if g.group_id is not None:
                    groups[g.group_id] = g.state
    if live:
        found.append(f"sessions still live: {sorted(live)}")
    shard_ranks: dict[str, int] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] != NAMESPACE:
            continue
        name = a["name"]
        if name.startswith(REGISTRY_NAME):
            continue
        if name.startswith("helios-shard-"):
            gid = name[len("helios-shard-"):].rsplit("-", 1)[0]
            if gid not in groups:
                found.append(f"shard worker {name} of no pool's group")
            shard_ranks[gid] = shard_ranks.get(gid, 0) + 1
        elif name.startswith(SESSION_ACTOR_PREFIX):
            sid = name[len(SESSION_ACTOR_PREFIX):]
            if sid in live:
                continue
            if not any(_owns_spare(reg, sid) for reg in registries):
                found.append(f"session actor {name}: neither a live session nor a spare ({_known_as(registries, sid)}; "
                             f"{_actor_says(name)})")
        else:
            found.append(f"unexpected Helios actor {name}")
    for gid, state in groups.items():
        if state in ("free", "leased") and shard_ranks.get(gid, 0) == 0:
            found.append(f"pool group {gid} has no live rank")
    for pid, name in _placement_groups().items():
        if name.startswith("helios-group-"):
            if name[len("helios-group-"):] not in groups:
                found.append(f"placement group {name} of no pool's group")
        elif pid not in base.other_placement_groups:
            found.append(f"placement group {pid} ({name or 'unnamed'}) not there at the baseline")
    try:
        feeds = serve.get_deployment_handle("Relay", "helios").stats.remote().result(timeout_s=60)["sessions"]
    except Exception as exc:  # noqa: BLE001 - the shared app is expected to be up: say what failed
        found.append(f"relay stats failed: {exc!r}")
    else:
        if feeds:
            found.append(f"relay feeds left: {feeds}")
    grown = (store_bytes() - base.store_bytes) / 2**20
    if grown > STORE_SLACK_MB:
        found.append(f"object store {grown:.1f} MB above the baseline (> {STORE_SLACK_MB} MB)")
    new_temp = _temp_entries() - base.temp_entries
    if new_temp:
        found.append(f"new temp entries: {sorted(new_temp)}")
    if base.recordings is not None and base.recordings.exists():
        stray = [str(p) for p in base.recordings.rglob("*") if p.is_file() and p.name != "recording.mp4"]
        if stray:
            found.append(f"stray files among the recordings: {stray}")
    return found


def _known_as(registries: list, sid: str) -> str:
    """What the registries know of `sid` (for the message): an ended session and why, or nothing."""
    for reg in registries:
        rec = ray.get(reg.get_session.remote(sid), timeout=60)
        if rec is not None:
            return f"{rec.status.value} session, end_reason {rec.end_reason!r}"
    return "unknown to every registry"


def _actor_says(name: str) -> str:
    """What the leaked actor itself reports (for the message): its tenant, whether it ended, its chunks."""
    from deployments.naming import NAMESPACE

    try:
        info = ray.get(ray.get_actor(name, namespace=NAMESPACE).info.remote(), timeout=30)
    except (ValueError, ray.exceptions.RayError) as exc:
        return f"no answer: {type(exc).__name__}"
    return f"it says: tenant {info.tenant!r}, ended {info.ended} ({info.end_reason!r}), {info.chunks} chunks"


def _owns_spare(registry, sid: str) -> bool:
    try:
        return bool(ray.get(registry.owns_spare.remote(sid), timeout=60))
    except ray.exceptions.RayError:
        return False


def assert_nothing_leaked(base: Baseline, timeout: float = 180) -> float:
    """Wait until `problems(base)` is empty (raise listing them after `timeout`); seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = problems(base)
        if not left:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise AssertionError(f"leaked after {timeout:.0f}s: " + "; ".join(left))
        time.sleep(0.5)
