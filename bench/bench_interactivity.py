"""Interactivity benchmark: prompt-to-viewer latency and time to first frame, through the served app.

DESIGN section 12 definitions, measured from outside over real HTTP with msgpack viewers:

- `prompt_latency`: from the ack of `set_prompt` (the POST answer) to the arrival at a live
  viewer of the first chunk made with that prompt; `--prompts` changes sent at random
  moments of a chunk; p50 / max in seconds and in chunks (33 frames at 24 fps = 1.375 s).
  Target: p50 <= 0.8 chunk, max <= 1.3 chunks.
- `ttff`: from `POST /v1/sessions` to the first frame at a viewer (warm pool): create,
  then `set_prompt` + `start` while the viewer connects. Target on test-pattern: < 0.5 s.

One JSON line per measurement, for the test-pattern model and the tiny Helios (TP=2, CPU).

    python bench/bench_interactivity.py [--prompts 10] [--ttff 5] [--models test-pattern,helios-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time

import httpx

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helios.media import framing  # noqa: E402 - after the environment it reads
from served_app import CPU_CLUSTER, KEY, active_session, local_cluster  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}
GEOMETRY = {"height": 128, "width": 128}
CHUNK_S = 33 / 24.0


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def config(tiny_path: str):
    """The embedded default's models (test-pattern and tiny Helios TP=2 at 0.25 CPU per rank), small pools."""
    from deployments.config import ServingConfig

    return ServingConfig.model_validate(
        {
            "app_name": "helios",
            "models": {
                "helios-tiny": {"kind": "helios", "path": tiny_path, "tp_size": 2, "pool_size": 1, "cpus_per_worker": 0.25,
                                "options": {**GEOMETRY, "pyramid_steps": [1, 1, 1]}},
                "test-pattern": {"kind": "test-pattern", "pool_size": 2,
                                 "options": {**GEOMETRY, "frames_per_chunk": 33, "fps": 24}},
            },
            "tenants": [{"name": "bench", "api_keys": [KEY], "quota": {"max_concurrent_sessions": 8}}],
            "session_linger_s": 1,
            "front_door": {"num_cpus": 0.1, "autoscaling": None},
            "relay": {"num_cpus": 0.1, "autoscaling": None},
        }
    )


class Viewer(threading.Thread):
    """A msgpack viewer: records (chunk, prompt, arrival time) of every chunk; waiters wake on arrival."""

    def __init__(self, http: httpx.Client, url: str) -> None:
        super().__init__(daemon=True)
        self.http, self.url = http, url
        self.arrivals: list[tuple[int, str | None, float]] = []
        self.timing: dict[str, float] = {}
        """Chunk 0's server-side stamps (wall clock) plus `viewer_got_at`: the TTFF breakdown."""
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.done = False

    def run(self) -> None:
        try:
            with self.http.stream("GET", self.url, timeout=900) as r:
                for item in framing.unpack_stream(r.iter_bytes()):
                    if item.get("type") == "end":
                        return
                    if item.get("timing"):
                        self.timing = {**item["timing"], "viewer_got_at": time.time()}
                    with self.cond:
                        self.arrivals.append((item["chunk"], item.get("prompt"), time.perf_counter()))
                        self.cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported by the waiter
            self.error = exc
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def wait(self, predicate, timeout: float = 300.0):
        """The first arrival matching `predicate`, waiting for it."""
        give_up = time.monotonic() + timeout
        with self.cond:
            while True:
                for a in self.arrivals:
                    if predicate(a):
                        return a
                if self.done or time.monotonic() > give_up:
                    raise RuntimeError(f"viewer: no matching chunk ({self.error or 'stream ended or timed out'})")
                self.cond.wait(0.5)


def create(http: httpx.Client, model: str) -> dict:
    return active_session(http, model, AUTH, poll_s=0.2)


def command(http: httpx.Client, sid: str, name: str, **args) -> float:
    """Run a command; the time its ack came back."""
    r = http.post(f"/v1/sessions/{sid}/commands", json={"command": name, "args": args}, headers=AUTH)
    r.raise_for_status()
    return time.perf_counter()


def delete(http: httpx.Client, sid: str) -> None:
    http.delete(f"/v1/sessions/{sid}", headers=AUTH)


def prompt_latency(http: httpx.Client, model: str, prompts: int, rng: random.Random) -> dict:
    body = create(http, model)
    sid = body["session_id"]
    viewer = Viewer(http, body["urls"]["stream_msgpack"])
    viewer.start()
    try:
        command(http, sid, "set_prompt", prompt="prompt 0")
        command(http, sid, "start")
        viewer.wait(lambda a: a[0] >= 1)  # playing steadily
        lat = []
        for i in range(1, prompts + 1):
            time.sleep(rng.uniform(0, CHUNK_S))  # a random moment of the chunk on screen
            text = f"prompt {i}"
            acked = command(http, sid, "set_prompt", prompt=text)
            _, _, arrived = viewer.wait(lambda a, text=text: a[1] == text)
            lat.append(arrived - acked)
    finally:
        delete(http, sid)
    chunks = [x / CHUNK_S for x in lat]
    return {"bench": "interactivity", "metric": "prompt_latency", "model": model, "n": len(lat),
            "p50_s": round(statistics.median(lat), 3), "max_s": round(max(lat), 3),
            "p50_chunks": round(statistics.median(chunks), 3), "max_chunks": round(max(chunks), 3),
            "mean_chunks": round(statistics.fmean(chunks), 3), "chunk_s": round(CHUNK_S, 4),
            "target": "p50 <= 0.8 chunk, max <= 1.3 chunks"}


STAGES = [
    ("post_sent", "admitted_at", "post_to_registry"),
    ("admitted_at", "actor_created_at", "actor_create"),
    ("actor_created_at", "start_called_at", "actor_to_start_call"),
    ("start_called_at", "actor_ready_at", "model_build"),
    ("actor_ready_at", "post_answered", "post_answer"),
    ("post_answered", "start_command_at", "commands_to_start"),
    ("start_command_at", "first_chunk_at", "first_chunk"),
    ("first_chunk_at", "relay_got_at", "relay_feed"),
    ("relay_got_at", "viewer_got_at", "to_viewer"),
]
"""TTFF stages: (from stamp, to stamp, name); stamps are wall clock on this one machine."""


def ttff_once(http: httpx.Client, model: str) -> tuple[float, dict[str, float]]:
    """Time to first frame and its stages in seconds."""
    t0, wall0 = time.perf_counter(), time.time()
    body = create(http, model)
    answered = time.time()
    sid = body["session_id"]
    viewer = Viewer(http, body["urls"]["stream_msgpack"] + "&from=0")
    viewer.start()
    try:
        command(http, sid, "set_prompt", prompt="first frame")
        command(http, sid, "start")
        _, _, arrived = viewer.wait(lambda a: True)
    finally:
        delete(http, sid)
    stamps = {**viewer.timing, "post_sent": wall0, "post_answered": answered}
    stages = {name: stamps[b] - stamps[a] for a, b, name in STAGES if a in stamps and b in stamps}
    stages["spare"] = float(viewer.timing.get("spare", 0.0))
    return arrived - t0, stages


def ttff(http: httpx.Client, model: str, runs: int, registry) -> dict:
    import ray

    values, stages = [], []
    for _ in range(runs):
        ray.get(registry.wait_warm.remote(600))
        total, parts = ttff_once(http, model)
        values.append(total)
        stages.append(parts)
    names = [name for _, _, name in STAGES if any(name in p for p in stages)]
    breakdown = {n: round(statistics.median([p[n] for p in stages if n in p]), 3) for n in names}
    return {"bench": "interactivity", "metric": "ttff", "model": model, "n": runs,
            "p50_s": round(statistics.median(values), 3), "max_s": round(max(values), 3),
            "min_s": round(min(values), 3), "target_s": 0.5 if model == "test-pattern" else None,
            "breakdown_p50_s": breakdown, "spare_actor_used": int(sum(p["spare"] for p in stages))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=10, help="set_prompt changes per model")
    ap.add_argument("--ttff", type=int, default=5, help="sessions created per model for time to first frame")
    ap.add_argument("--models", default="test-pattern,helios-tiny")
    ap.add_argument("--port", type=int, default=8798)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    ap.add_argument("--tiny-dir", default="~/.cache/helios-serve/tiny", help="where the tiny preset folder is (made if absent)")
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.naming import NAMESPACE, registry_actor_name
    from helios.pipeline.tiny import make_tiny_pipeline

    tiny = str(make_tiny_pipeline(os.path.expanduser(args.tiny_dir), seed=0))
    with local_cluster(**CPU_CLUSTER):
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(config(tiny)), name="helios", route_prefix="/")
        registry = ray.get_actor(registry_actor_name("helios"), namespace=NAMESPACE)
        ray.get(registry.wait_warm.remote(600))
        http = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120)
        rng = random.Random(args.seed)
        for model in args.models.split(","):
            emit(**ttff(http, model, args.ttff, registry))
            ray.get(registry.wait_warm.remote(600))
            emit(**prompt_latency(http, model, args.prompts, rng))
            ray.get(registry.wait_warm.remote(600))


if __name__ == "__main__":
    main()
