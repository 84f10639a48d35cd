"""Encodes per chunk with LL-HLS players next to mp4 and mjpeg viewers (one JSON line per player count).

One session's fan-out (helios.media, real PyAV encoders, no Ray): one mp4 viewer, one
mjpeg viewer and 1 / 4 / 16 HLS feeds (a relay replica has one per session, read by all
its players; more feeds stand for more consumers of the same encodings); prints the encodes per chunk and format (1.0 means
encode once) and the mean time from publishing a chunk to its segment in every playlist.

Run: `.venv/bin/python bench/bench_hls.py [--chunks N]` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helios.media.fanout import ChunkEntry, FanoutStats, SessionFanout  # noqa: E402
from helios.media.hlsfeed import HlsFeed  # noqa: E402

H, W, N = 128, 128, 33


def frames(k: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.empty((N, H, W, 3), dtype=np.uint8)
    for i in range(N):
        out[i] = ((xx + 3 * i + 20 * k)[..., None] + np.array([0, 40, 80]) + yy[..., None] // 2) % 256
    return out


async def run(players: int, chunks: int) -> dict:
    fo = SessionFanout("bench", FanoutStats(), window=8, viewer_queue=64, pace_mjpeg=False)
    viewers = [fo.subscribe("mp4", 0), fo.subscribe("mjpeg", 0)]
    drains = [asyncio.ensure_future(_drain(fo, v)) for v in viewers]
    feeds = [HlsFeed(fo, window=6) for _ in range(players)]
    waits = []
    for k in range(chunks):
        started = time.perf_counter()
        fo.publish(ChunkEntry(k, {"fps": 24, "first_frame": k * N, "produced_at": time.time()}, _loader(k)))
        for f in feeds:
            await f.ready.wait()
            while f.track.last_msn is None or f.track.last_msn < k:
                await f.track.wait(k, None, timeout_s=60)
        waits.append((time.perf_counter() - started) * 1000)
        playlists = [f.track.playlist("?token=t") for f in feeds]  # what the players read
        assert all(f"{k}.m4s" in p for p in playlists)
    fo.finish("done")
    await asyncio.gather(*drains, *(f.task for f in feeds))
    enc = fo.stats.chunks_encoded
    return {"bench": "hls_encode_once", "hls_playlists": players, "mp4_viewers": 1, "mjpeg_viewers": 1, "chunks": chunks,
            "mp4_encodes_per_chunk": enc["mp4"] / chunks, "mjpeg_encodes_per_chunk": enc["mjpeg"] / chunks,
            "publish_to_segment_ms_mean": round(float(np.mean(waits)), 1)}


def _loader(k: int):
    async def load():
        return frames(k)
    return load


async def _drain(fo, viewer):
    async for _ in fo.stream(viewer):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=6)
    args = parser.parse_args()
    for players in (1, 4, 16):
        print(json.dumps(asyncio.run(run(players, args.chunks))), flush=True)


if __name__ == "__main__":
    main()
