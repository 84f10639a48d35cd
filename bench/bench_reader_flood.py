"""A flood of SSE readers on one viewer token: what is admitted, and how fast /healthz answers meanwhile.

Starts a local Ray cluster and `serve.run` of the real app (test-pattern model, default
limits), creates one session, opens `--connections` SSE streams on its viewer token at
once, waits up to `--settle` seconds for each to get its status, then times `GET /healthz`.
Prints one JSON line: statuses of the streams, how many are still unanswered, the healthz
status and its latency. Issue 11 measured 22.7 s for /healthz with 300 such connections.

Usage: python bench/bench_reader_flood.py [--connections 300] [--settle 30] [--port 8796]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter

import httpx

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

KEY = "bench-key-0123456789"


def config():
    from deployments.config import ServingConfig

    return ServingConfig.model_validate({
        "app_name": "helios",
        "models": {"test-pattern": {"kind": "test-pattern", "pool_size": 1, "options": {"height": 64, "width": 64}}},
        "tenants": [{"name": "bench", "api_keys": [KEY]}],
        "front_door": {"num_cpus": 0.1, "autoscaling": None},
        "relay": {"num_cpus": 0.1, "autoscaling": None},
    })


async def flood(base: str, events_url: str, connections: int, settle_s: float) -> dict:
    statuses: Counter = Counter()
    answered = asyncio.Event()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=connections + 8, max_keepalive_connections=0)

    async def reader(client: httpx.AsyncClient) -> None:
        try:
            async with client.stream("GET", events_url) as r:
                statuses[r.status_code] += 1
                if sum(statuses.values()) >= connections:
                    answered.set()
                if r.status_code == 200:
                    await stop.wait()
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1

    async with httpx.AsyncClient(base_url=base, timeout=None, limits=limits) as client:
        tasks = [asyncio.ensure_future(reader(client)) for _ in range(connections)]
        try:
            await asyncio.wait_for(answered.wait(), settle_s)
        except TimeoutError:
            pass
        async with httpx.AsyncClient(base_url=base, timeout=120) as probe:
            t0 = time.perf_counter()
            health = await probe.get("/healthz")
            healthz_s = time.perf_counter() - t0
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "statuses": {str(k): v for k, v in statuses.items()},
        "unanswered": connections - sum(statuses.values()),
        "healthz_status": health.status_code,
        "healthz_s": round(healthz_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=8796)
    args = ap.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app

    ray.init(num_cpus=4, object_store_memory=256 * 1024**2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build_app(config()), name="helios", route_prefix="/")
    base = f"http://127.0.0.1:{args.port}"
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    try:
        for _ in range(240):  # the pool warms up in the background
            r = http.post("/v1/sessions", json={"model": "test-pattern"})
            if r.status_code == 201:
                break
            if r.status_code == 202:
                http.delete(f"/v1/sessions/{r.json()['session_id']}")
            time.sleep(0.5)
        body = r.json()
        sid = body["session_id"]
        http.post(f"/v1/sessions/{sid}/commands", json={"command": "set_prompt", "args": {"prompt": "flood"}})
        http.post(f"/v1/sessions/{sid}/commands", json={"command": "start"})
        t0 = time.perf_counter()
        out = asyncio.run(flood(base, body["urls"]["events"], args.connections, args.settle))
        print(json.dumps({"bench": "reader_flood", "connections": args.connections, **out,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        http.delete(f"/v1/sessions/{sid}")
    finally:
        http.close()
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
