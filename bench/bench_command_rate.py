"""Command-rate limit under a flood: what a hostile client gets through, over real HTTP.

Starts a local Ray cluster and `serve.run` of the real app (test-pattern model only, the
default per-session rate of 20 commands/s with bursts of 40), starts one session, then
`--clients` concurrent HTTP clients send `set_seed` as fast as they can for `--seconds`.
Prints one JSON line: commands offered / accepted (200) / refused (429) per second, any
other status, the 429 answer time (p50/p99 ms), and whether the session kept generating.

Usage: python bench/bench_command_rate.py [--seconds 10] [--clients 8] [--port 8795]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter

import httpx

from served_app import KEY, bench_args, served_app, started_session


async def flood(base: str, sid: str, seconds: float, clients: int) -> tuple[Counter, list[float]]:
    statuses: Counter = Counter()
    refused_ms: list[float] = []
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {KEY}"}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            t0 = time.perf_counter()
            r = await client.post(f"/v1/sessions/{sid}/commands", json={"command": "set_seed", "args": {"seed": i * 10**6 + n}})
            statuses[r.status_code] += 1
            if r.status_code == 429:
                refused_ms.append((time.perf_counter() - t0) * 1000)

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        await asyncio.gather(*(one(client, i) for i in range(clients)))
    return statuses, refused_ms


def main() -> None:
    args = bench_args(seconds=10.0, clients=8, port=8795)

    with served_app(args.port) as (base, http):
        sid = started_session(http, "flood")["session_id"]
        time.sleep(1.1)  # refill the bucket: the flood starts from a full burst
        before = http.get(f"/v1/sessions/{sid}").json()["state"].get("current_chunk", 0)
        t0 = time.perf_counter()
        statuses, refused_ms = asyncio.run(flood(base, sid, args.seconds, args.clients))
        elapsed = time.perf_counter() - t0
        after = http.get(f"/v1/sessions/{sid}").json()
        refused_ms.sort()
        print(json.dumps({
            "bench": "command_rate",
            "seconds": round(elapsed, 2),
            "clients": args.clients,
            "offered_per_s": round(sum(statuses.values()) / elapsed, 1),
            "accepted_per_s": round(statuses[200] / elapsed, 1),
            "refused_per_s": round(statuses[429] / elapsed, 1),
            "accepted": statuses[200],
            "expected_accepted_max": int(40 + 20 * elapsed),
            "other_statuses": {str(k): v for k, v in statuses.items() if k not in (200, 429)},
            "refused_ms_p50": round(statistics.median(refused_ms), 1) if refused_ms else None,
            "refused_ms_p99": round(refused_ms[int(0.99 * (len(refused_ms) - 1))], 1) if refused_ms else None,
            "session_status": after["status"],
            "chunks_during_flood": after["state"].get("current_chunk", 0) - before,
        }), flush=True)
        http.delete(f"/v1/sessions/{sid}")


if __name__ == "__main__":
    main()
