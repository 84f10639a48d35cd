"""Soak, CI size: sessions of both models come and go for `SOAK_S` seconds; nothing grows, nothing is left.

The shared app (tests/serve/conftest.py) runs bench/soak.py's traffic: `CONCURRENCY` session
lifecycles at once, each with 1-3 viewers (mp4, mjpeg, msgpack, SSE, WebSocket, LL-HLS)
joining and leaving and commands sent, sampled every `SAMPLE_S`. After a warm-up and again
at the end the traffic stops and every session ends (idle checkpoints). Asserted
(docs/soak.md, where the bounds are explained with the numbers they come from):

- no 5xx (an LL-HLS 503 with Retry-After is the protocol's "not yet", not an error);
- nothing left behind: no session actor but the parked spares, no extra placement group, no
  per-session entry in the relay, the registry's tables or the front door's HLS players
  (counts of entries, exact, not memory), fds within `FD_BOUND` of the warm checkpoint;
- long-lived processes (relay, front door, registry, shard workers): RSS after malloc_trim(0)
  grew by at most `TRIMMED_GROWTH_MB` per process from the warm checkpoint to the end
  (trimmed, so what glibc keeps free for reuse is not counted: that alone moved a shard
  worker by +120 MB in a minute), and at most `TOTAL_GROWTH_MB` all together.

Duration: HELIOS_SOAK_S (default 180 s, warm-up and checkpoints included).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest
import ray

from tests.serve.conftest import APP_NAME, wait_for

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

SOAK_S = float(os.environ.get("HELIOS_SOAK_S", "180"))
"""The whole soak, warm-up and both idle checkpoints included (CI: 180 s; about 25 more for the set-up)."""
END_RESERVE_S = 25.0
"""Kept for the end: traffic stops, every session ends, the last checkpoint is sampled."""
WARMUP_S = min(30.0, SOAK_S / 5)
"""Traffic before the warm checkpoint: every code path ran once (encoders, HLS, recordings, a reset)."""
SAMPLE_S = 10.0
CONCURRENCY = 3
"""Session lifecycles at once: the shared app has 2 + 2 slots and tenant alice 4 sessions."""
LONG_LIVED = ("relay", "front_door", "registry", "shard:")
TRIMMED_GROWTH_MB = 60.0
"""Per long-lived process, warm -> end, after malloc_trim(0) (see docs/soak.md for what was measured)."""
TOTAL_GROWTH_MB = 150.0
"""All long-lived processes together, warm -> end, after malloc_trim(0)."""
FD_BOUND = 40
"""Open fds of this cluster's processes, end vs warm (sockets of the idle pool come and go)."""
REGISTRY_TABLES = ("sessions", "pending", "launching", "request_of", "spare_of", "ending", "queued",
                   "reader_leases", "reader_sessions", "reader_tenants")
"""Registry tables empty with no session (its `ended` memo is bounded by ENDED_KEPT, not checked)."""


def _soak_module():
    name = "helios_bench_soak"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "bench" / "soak.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _long_lived(sample: dict) -> dict[str, float]:
    return {k: v["rss"] for k, v in sample["procs"].items() if k.startswith(LONG_LIVED)}


def test_sessions_coming_and_going_leave_nothing_and_grow_nothing(served):
    soak = _soak_module()
    served.settle()
    registry = served.registry()
    wait_for(lambda: all(n >= served.config.spare_session_actors for n in ray.get(registry.spare_counts.remote()).values()),
             180, "every model's spare session actors parked")
    traffic = soak.Traffic(served.base_url, served.headers("alice"), ["helios-tiny", "test-pattern"],
                           concurrency=CONCURRENCY, session_s=(6.0, 18.0))
    pgs_before = soak.placement_groups_alive()

    def run_traffic(seconds: float, samples: list) -> None:
        traffic.start()
        try:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                traffic._stop.wait(min(SAMPLE_S, left))  # the sampling period, not a synchronisation
                samples.append(soak.sample(APP_NAME))
        finally:
            traffic.stop()

    def checkpoint() -> dict:
        soak.quiesce(APP_NAME, registry, timeout=240)
        untrimmed = soak.sample(APP_NAME)
        reports = soak.memory_reports(APP_NAME, trim=True)
        return {"untrimmed": untrimmed, "trimmed": soak.sample(APP_NAME), "reports": reports}

    started = time.monotonic()
    warm_samples: list = []
    run_traffic(WARMUP_S, warm_samples)
    warm = checkpoint()
    samples: list = []
    run_traffic(max(SAMPLE_S * 3, started + SOAK_S - END_RESERVE_S - time.monotonic()), samples)
    end = checkpoint()
    took = time.monotonic() - started

    tally = traffic.tally
    slopes = soak.slopes(samples, "rss")
    grown = soak.growth(warm["trimmed"], end["trimmed"])
    grown_untrimmed = soak.growth(warm["untrimmed"], end["untrimmed"])
    long_lived = {k: v for k, v in grown.items() if k.startswith(LONG_LIVED)}
    print(json.dumps({"soak_s": SOAK_S, "took_s": round(took), "sessions": dict(tally.sessions), "viewers": dict(tally.viewers),
                      "statuses": dict(tally.statuses), "errors": tally.errors[:10],
                      "growth_trimmed_mb": long_lived, "growth_untrimmed_mb": grown_untrimmed,
                      "trimmed_mb": {k: r["trimmed_mb"] for k, r in end["reports"].items()},
                      "slopes_mb_per_min": {k: s["mb_per_min"] for k, s in slopes.items() if k.startswith(LONG_LIVED)}}))

    # Traffic really ran: both models, several sessions each, every kind of viewer.
    assert min(tally.sessions.get(m, 0) for m in ("helios-tiny", "test-pattern")) >= 2, dict(tally.sessions)
    assert tally.fivexx() == 0, tally.errors
    # Nothing left behind (exact counts).
    roles = soak.actor_roles()
    spares = sum(ray.get(registry.spare_counts.remote()).values())
    assert sum(1 for r in roles.values() if r == "session_actor") <= spares, roles
    assert soak.placement_groups_alive() == pgs_before
    assert not any(soak.relay_state(APP_NAME).values()), soak.relay_state(APP_NAME)
    state = ray.get(registry.state_counts.remote())
    assert not {t: state[t] for t in REGISTRY_TABLES if state[t]}, state  # the message names the tables left
    fds = sum(p["fds"] for p in end["untrimmed"]["procs"].values()) - sum(p["fds"] for p in warm["untrimmed"]["procs"].values())
    assert fds <= FD_BOUND, fds
    # Nothing grows in the long-lived processes (same pids at both checkpoints: none restarted).
    assert set(_long_lived(warm["trimmed"])) == set(_long_lived(end["trimmed"])), "a long-lived process restarted"
    assert all(g <= TRIMMED_GROWTH_MB for g in long_lived.values()), long_lived
    assert sum(long_lived.values()) <= TOTAL_GROWTH_MB, long_lived


def test_ended_sessions_leave_no_actor_handle_or_class_in_the_long_lived_processes(served):
    """Found by the soak (docs/soak.md): session actor handles are cached per session id (deployments/lookup.py
    ActorCache, up to 4,096), and an ended session's must go with it; and every session actor is of one Ray
    actor class (deployments/detached.py), not a new one per session that each process loads and keeps."""
    from ray import serve

    served.settle()
    registry = served.registry()
    front_door = serve.get_deployment_handle("FrontDoor", APP_NAME)
    relay = serve.get_deployment_handle("Relay", APP_NAME)

    def classes() -> dict[str, int]:
        return {"front_door": front_door.memory_report.remote().result(timeout_s=60)["actor_classes"],
                "relay": relay.memory_report.remote().result(timeout_s=60)["actor_classes"],
                "registry": ray.get(registry.memory_report.remote(), timeout=60)["actor_classes"]}

    before = classes()
    for model in ("test-pattern", "helios-tiny", "test-pattern"):
        r = served.create(model=model)
        assert r.status_code in (201, 202), r.text
        sid = r.json()["session_id"]
        assert served.command(sid, "set_prompt", prompt="handles").status_code in (200, 202)
        assert served.command(sid, "start").status_code in (200, 202)
        if r.status_code == 201:
            assert served.get(sid)["status"] == "active"  # GET looks the actor up through the cache
        assert served.delete(sid).status_code == 200
    served.settle()
    assert ray.get(registry.state_counts.remote())["actor_cache"] == 0
    # The front door's prefetch of a just-created session's handle may land after its DELETE: wait for it.
    wait_for(lambda: front_door.memory_report.remote().result(timeout_s=60)["state"]["actor_cache"] == 0, 60,
             "no session actor handle left in the front door")
    assert front_door.memory_report.remote().result(timeout_s=60)["state"]["last_states"] == 0
    # At most the one session actor class, loaded once by a process that had not met it yet (a new one
    # per session added 3 here).
    after = classes()
    assert all(after[p] - before[p] <= 1 for p in before), (before, after)
