"""A flood of SSE readers on one viewer token: what is admitted, and how fast /healthz answers meanwhile.

Starts a local Ray cluster and `serve.run` of the real app (test-pattern model, default
limits), creates one session, opens `--connections` SSE streams on its viewer token at
once, waits up to `--settle` seconds for each to get its status, then times `GET /healthz`.
Prints one JSON line: statuses of the streams, how many are still unanswered, the healthz
status and its latency. Issue 11 measured 22.7 s for /healthz with 300 such connections.

Usage: python bench/bench_reader_flood.py [--connections 300] [--settle 30] [--port 8796]
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx

from served_app import bench_args, served_app, started_session

HEALTHZ_TIMEOUT_S = 120.0


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
        async with httpx.AsyncClient(base_url=base, timeout=HEALTHZ_TIMEOUT_S) as probe:
            t0 = time.perf_counter()
            try:
                healthz_status: int | str = (await probe.get("/healthz")).status_code
            except httpx.TimeoutException:
                healthz_status = f"no answer within {HEALTHZ_TIMEOUT_S:.0f} s"
            healthz_s = time.perf_counter() - t0
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "statuses": {str(k): v for k, v in statuses.items()},
        "unanswered": connections - sum(statuses.values()),
        "healthz_status": healthz_status,
        "healthz_s": round(healthz_s, 3),
    }


def main() -> None:
    args = bench_args(connections=300, settle=30.0, port=8796)

    with served_app(args.port) as (base, http):
        body = started_session(http, "flood")
        t0 = time.perf_counter()
        out = asyncio.run(flood(base, body["urls"]["events"], args.connections, args.settle))
        print(json.dumps({"bench": "reader_flood", "connections": args.connections, **out,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        http.delete(f"/v1/sessions/{body['session_id']}")


if __name__ == "__main__":
    main()
