"""Serving benchmark: served FPS vs the bare pipeline, chunk latency to the first viewer byte, scaling.

Runs everything in one process tree on this machine (a local Ray cluster, `serve.run` of
the real app with the tiny model) and prints one JSON line per measurement:

- `fps_ratio`: frames/s a msgpack viewer receives from one served session (TP = --tp, with the
  benchmark-only `pacing: off`, so chunks go out as fast as they are generated, not at 24 fps)
  divided by the frames/s of the bare pipeline at the same TP size driven directly (a shard
  group with no session, relay or HTTP). Measured alternately (bare, served, bare, served, ...)
  `--rounds` times each in one run; `ratio` is mean served over mean bare, `median_pair_ratio` the
  median of the rounds' served/bare (the machine is shared: a busy spell hits one round, not the median).
- `latency`: generation end of a chunk (its `produced_at`) → first byte to a viewer, p50/p99,
  as measured by the relay, plus the client-side arrival time after `chunk_complete`.
- `scaling`: sessions x viewers of the test-pattern model (real-time paced): delivered
  frames/s per viewer over the 24 fps a viewer should get (1.0 = real time).

Usage: python bench/bench_serve.py [--chunks 6] [--rounds 5] [--tp 2] [--port 8799]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time

import httpx
import msgpack

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_load import ProcessMeter  # noqa: E402
from served_app import CPU_CLUSTER, KEY, active_session, local_cluster  # noqa: E402 - after the environment it reads

TINY = {"height": 128, "width": 128, "pyramid_steps": [1, 1, 1]}


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def config(tiny_path: str, tp: int):
    from deployments.config import ServingConfig

    return ServingConfig.model_validate(
        {
            "app_name": "helios",
            "models": {
                # pacing off (benchmark-only): the served stream runs as fast as the bare pipeline can.
                "helios-tiny": {"kind": "helios", "path": tiny_path, "tp_size": tp, "pool_size": 1,
                                "cpus_per_worker": 0.25, "pacing": "off", "options": TINY},
                "test-pattern": {"kind": "test-pattern", "pool_size": 8, "options": {"height": 128, "width": 128}},
            },
            "tenants": [{"name": "bench", "api_keys": [KEY], "quota": {"max_concurrent_sessions": 16}}],
            "session_linger_s": 1,
            # No spare session actors: a session taking a spare starts its replacement (an actor importing the
            # runtime, seconds of CPU) during the measured chunks, a start-up cost that is not per-chunk serving.
            "spare_session_actors": 0,
            "front_door": {"num_cpus": 0.1, "autoscaling": None},
            "relay": {"num_cpus": 0.1, "autoscaling": None},
        }
    )


class BareGroup:
    """A shard group of `tp` ranks driven directly (no session, relay or HTTP): the bare pipeline's speed."""

    def __init__(self, tiny_path: str, tp: int):
        from deployments.shard import ShardGroupEngine, create_shard_group

        self.group = asyncio.run(create_shard_group("bench", tiny_path, tp_size=tp, device="cpu", dtype="float32",
                                                    cpus_per_worker=0.25, overrides=TINY))
        self.engine = ShardGroupEngine(self.group)

    def fps(self, chunks: int) -> float:
        """Frames/s over `chunks` chunks from a reset (chunk 0 excluded: warm-up, as for the served viewer)."""
        self.engine.reset(1)
        self.engine.set_prompt("a red fox in the snow")
        self.engine.next_chunk()
        t0 = time.perf_counter()
        n = 0
        for _ in range(chunks - 1):
            n += self.engine.next_chunk().frames.shape[0]
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        from deployments.shard import destroy_shard_group

        destroy_shard_group(self.group)


class Viewer(threading.Thread):
    """A msgpack viewer recording when each chunk's first byte arrived."""

    def __init__(self, http: httpx.Client, url: str, want: int):
        super().__init__(daemon=True)
        self.http, self.url, self.want = http, url, want
        self.arrivals: list[tuple[int, int, float]] = []  # (chunk, frames, time)
        self.error = None

    def run(self):
        try:
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
            with self.http.stream("GET", self.url, timeout=900) as r:
                for piece in r.iter_bytes():
                    now = time.perf_counter()
                    unpacker.feed(piece)
                    for item in unpacker:
                        if item.get("type") == "end":
                            return
                        self.arrivals.append((item["chunk"], item["shape"][0], now))
                        if len(self.arrivals) >= self.want:
                            return
        except Exception as exc:  # noqa: BLE001
            self.error = exc


def start_session(http: httpx.Client, model: str, prompt: str) -> dict:
    h = {"Authorization": f"Bearer {KEY}"}
    body = active_session(http, model, h, poll_s=0.5)
    http.post(f"/v1/sessions/{body['session_id']}/commands", json={"command": "set_prompt", "args": {"prompt": prompt}}, headers=h)
    return body


def command(http: httpx.Client, sid: str, name: str) -> None:
    http.post(f"/v1/sessions/{sid}/commands", json={"command": name, "args": {}}, headers={"Authorization": f"Bearer {KEY}"})


def delete(http: httpx.Client, sid: str) -> None:
    http.delete(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {KEY}"})


def served_fps(http: httpx.Client, chunks: int) -> tuple[float, list]:
    body = start_session(http, "helios-tiny", "a red fox in the snow")
    return watched_fps(http, body, chunks, join_s=1800)


def watched_fps(http: httpx.Client, body: dict, chunks: int, join_s: float) -> tuple[float, list]:
    """Start the created session `body`, watch `chunks` chunks from chunk 0, end it: (viewer FPS, arrivals).

    The FPS counts from the first chunk's arrival, so the session's start-up is not in it.
    """
    viewer = Viewer(http, body["urls"]["stream_msgpack"] + "&from=0", chunks)
    viewer.start()
    command(http, body["session_id"], "start")
    viewer.join(join_s)
    delete(http, body["session_id"])
    arr = viewer.arrivals
    if viewer.error or len(arr) < 2:
        raise RuntimeError(f"served viewer got {len(arr)} chunks ({viewer.error})")
    frames = sum(n for _, n, _ in arr[1:])
    return frames / (arr[-1][2] - arr[0][2]), arr


def scaling(http: httpx.Client, sessions: int, viewers: int, chunks: int) -> dict:
    bodies = [start_session(http, "test-pattern", f"session {i}") for i in range(sessions)]
    vs = [Viewer(http, b["urls"]["stream_msgpack"], chunks) for b in bodies for _ in range(viewers)]
    for v in vs:
        v.start()
    for b in bodies:
        command(http, b["session_id"], "start")
    for v in vs:
        v.join(600)
    for b in bodies:
        delete(http, b["session_id"])
    rates = []
    for v in vs:
        a = v.arrivals
        if len(a) >= 2:
            rates.append(sum(n for _, n, _ in a[1:]) / (a[-1][2] - a[0][2]))
    mean = sum(rates) / len(rates) if rates else 0.0
    return {"sessions": sessions, "viewers_per_session": viewers, "viewer_fps_mean": round(mean, 2),
            "realtime_ratio": round(mean / 24.0, 3), "viewers_ok": len(rates), "viewers": len(vs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=6, help="chunks per FPS measurement")
    ap.add_argument("--rounds", type=int, default=5, help="bare/served measurement pairs, alternating")
    ap.add_argument("--tp", type=int, default=2, help="TP size of the tiny model")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--scaling-chunks", type=int, default=4)
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.naming import NAMESPACE, registry_actor_name
    from helios.pipeline.tiny import make_tiny_pipeline

    tiny = str(make_tiny_pipeline(os.path.expanduser("~/.cache/helios-serve/tiny"), seed=0))
    with local_cluster(**CPU_CLUSTER):
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(config(tiny, args.tp)), name="helios", route_prefix="/")
        registry = ray.get_actor(registry_actor_name("helios"), namespace=NAMESPACE)
        http = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120)
        bare_group = BareGroup(tiny, args.tp)
        meter = ProcessMeter()
        bare, served = [], []
        try:
            # Alternate, so both sides see the same (shared, noisy) machine on average; both unpaced.
            for i in range(args.rounds):
                meter.start()
                bare.append(bare_group.fps(args.chunks))
                bare_procs = meter.stop()
                ray.get(registry.wait_warm.remote(600))
                meter.start()
                served.append(served_fps(http, args.chunks)[0])
                served_procs = meter.stop()
                # Where the CPU went (cores per process kind over each measurement): time the served side loses.
                emit(bench="serve", metric="fps_pair", round=i, bare_fps=round(bare[-1], 3), served_fps=round(served[-1], 3),
                     ratio=round(served[-1] / bare[-1], 3), load_avg=round(os.getloadavg()[0], 2),
                     bare_cores={k: v["cores"] for k, v in bare_procs.items()},
                     served_cores={k: v["cores"] for k, v in served_procs.items()})
        finally:
            bare_group.close()
        mean_bare, mean_served = sum(bare) / len(bare), sum(served) / len(served)
        emit(bench="serve", metric="fps_ratio", tp=args.tp, pacing="off", served_fps=round(mean_served, 3),
             bare_fps=round(mean_bare, 3), ratio=round(mean_served / mean_bare, 3),
             pair_ratios=[round(s / b, 3) for s, b in zip(served, bare)],
             median_pair_ratio=round(statistics.median(s / b for s, b in zip(served, bare)), 3),
             chunks=args.chunks, rounds=args.rounds, load_avg=round(os.getloadavg()[0], 2))
        relay = serve.get_deployment_handle("Relay", "helios")
        lat = relay.stats.remote().result()["latency_s"]
        emit(bench="serve", metric="latency", what="generation end -> first viewer byte (relay)",
             p50_ms=round(1000 * (lat["p50"] or 0), 2), p99_ms=round(1000 * (lat["p99"] or 0), 2), n=lat["n"])
        for s, v in ((1, 1), (1, 4), (2, 2), (4, 1)):
            emit(bench="serve", metric="scaling", model="test-pattern", **scaling(http, s, v, args.scaling_chunks))


if __name__ == "__main__":
    main()
