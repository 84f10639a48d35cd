"""Relay benchmarks; each result is one JSON line on stdout.

1. encode: ms per 33-frame chunk per format (mp4 / mjpeg / msgpack) at the tiny size
   (128x128) and the real Helios size (384x640), and the ratio to real time (chunk
   duration / encode time; > 1 means the encoder keeps up with a live stream).
2. viewers: one session on a local Ray cluster streamed by the real relay deployment
   to 1, 4 and 16 viewers: encodes per chunk (stays 1 per format, whatever the viewers),
   and the latency from a chunk's generation end (`produced_at`) to its first byte at a
   viewer (client side, p50/p99) and to its hand-off inside the relay (relay side).

Run: `.venv/bin/python bench/bench_relay.py [--quick]` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helios.media import framing, mjpeg  # noqa: E402
from helios.media.mp4 import FragmentedMp4Encoder  # noqa: E402

FPS, N = 24, 33


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def frames_for(k: int, h: int, w: int) -> np.ndarray:
    """Moving smooth content (encoders work harder on it than on flat frames, less than on noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((N, h, w, 3), np.uint8)
    for i in range(N):
        t = k * N + i
        out[i, ..., 0] = (128 + 100 * np.sin((xx + 3 * t) / 17.0)).astype(np.uint8)
        out[i, ..., 1] = (128 + 100 * np.cos((yy - 2 * t) / 23.0)).astype(np.uint8)
        out[i, ..., 2] = ((xx + yy + 5 * t) % 256).astype(np.uint8)
    return out


def bench_encode(sizes: list[tuple[int, int]], chunks: int) -> None:
    chunk_ms = N / FPS * 1000.0
    for h, w in sizes:
        data = [frames_for(k, h, w) for k in range(chunks)]
        enc = FragmentedMp4Encoder(w, h, FPS)
        for fmt, fn in (
            ("mp4", enc.encode_chunk),
            ("mjpeg", lambda f: mjpeg.encode_parts(f, 80)),
            ("msgpack", lambda f: framing.pack_chunk(f, chunk=0, first_frame=0, prompt="p", fps=FPS)),
        ):
            fn(data[0])  # warm-up (encoder start, first IDR)
            times, sizes_out = [], []
            for f in data:
                t0 = time.perf_counter()
                out = fn(f)
                times.append((time.perf_counter() - t0) * 1000.0)
                sizes_out.append(out.nbytes if hasattr(out, "nbytes") else sum(map(len, out)) if isinstance(out, list) else len(out))
            p50 = float(np.percentile(times, 50))
            emit(bench="relay_encode", format=fmt, height=h, width=w, frames=N, chunks=len(times),
                 ms_per_chunk_p50=round(p50, 2), ms_per_chunk_max=round(max(times), 2),
                 bytes_per_chunk=int(np.mean(sizes_out)), realtime_ratio=round(chunk_ms / p50, 2))
        enc.close()


def fake_session_class():
    import ray

    @ray.remote(num_cpus=0)
    class BenchSession:
        """Produces chunks on request with the real session actor's wait_chunks interface."""

        def __init__(self, h: int, w: int):
            self.ring, self.next_chunk, self.ended = [], 0, False
            self.h, self.w = h, w
            self.produced_at: dict[int, float] = {}
            self._ev = None

        def _event(self):
            if self._ev is None:
                self._ev = asyncio.Event()
            return self._ev

        async def produce(self) -> None:
            k = self.next_chunk
            frames = frames_for(k, self.h, self.w)
            now = time.time()
            ref = ray.put(frames)
            self.ring.append({"chunk": k, "refs": [ref], "meta": {"chunk": k, "first_frame": k * N, "frames": N,
                              "height": self.h, "width": self.w, "fps": FPS, "prompt": "bench", "produced_at": now}})
            del self.ring[:-8]
            self.produced_at[k] = now
            self.next_chunk += 1
            self._event().set()
            self._ev = asyncio.Event()

        async def end(self) -> dict:
            self.ended = True
            self._event().set()
            return self.produced_at

        async def wait_chunks(self, after: int, timeout_s: float):
            from deployments.protocol import ChunkBatch, ChunkItem

            if not (self.ring and self.ring[-1]["chunk"] > after) and not self.ended:
                try:
                    await asyncio.wait_for(self._event().wait(), timeout_s)
                except asyncio.TimeoutError:
                    pass
            return ChunkBatch([ChunkItem(**c) for c in self.ring if c["chunk"] > after], self.ended, "bench",
                              self.ring[0]["chunk"] if self.ring else -1, self.ring[-1]["chunk"] if self.ring else -1)

    return BenchSession


def bench_viewers(counts: list[int], chunks: int, formats: list[str], h: int, w: int, period_s: float) -> None:
    import ray
    from ray import cloudpickle, serve

    from deployments.local_ray import start_local_ray
    from deployments.naming import NAMESPACE, session_actor_name
    from deployments.relay import Relay

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start_local_ray(tries=5, address="local", num_cpus=4, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
                    log_to_driver=False, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        relay = serve.run(
            Relay.options(num_replicas=1, ray_actor_options={"num_cpus": 0.5}).bind(pace_mjpeg=False, viewer_queue_chunks=64),
            name="bench-relay", route_prefix=None,
        )
        cls = fake_session_class()
        for fmt, viewers in [(f, v) for f in formats for v in counts]:
            sid = uuid.uuid4().hex
            actor = cls.options(name=session_actor_name(sid), namespace=NAMESPACE).remote(h, w)

            async def run_once():
                before = await relay.stats.remote()
                first_seen: dict[int, float] = {}

                async def viewer():
                    gen = relay.options(stream=True).stream.remote(sid, fmt, 0)
                    k = 0
                    async for piece in gen:
                        if fmt == "msgpack":
                            for m in framing.unpack_stream([piece]):
                                if m["type"] == "chunk":
                                    first_seen.setdefault(m["chunk"], time.time())
                        else:
                            first_seen.setdefault(k, time.time())  # mp4: one piece per chunk
                            k += 1

                tasks = [asyncio.ensure_future(viewer()) for _ in range(viewers)]
                t0 = time.perf_counter()
                for k in range(chunks):
                    await actor.produce.remote()
                    await asyncio.sleep(period_s)  # the session's production pace (benchmark load, not a test)
                produced = await actor.end.remote()
                await asyncio.gather(*tasks)
                wall = time.perf_counter() - t0
                after = await relay.stats.remote()
                return before, after, produced, first_seen, wall

            before, after, produced, first_seen, wall = asyncio.run(run_once())
            lat = [first_seen[k] - produced[k] for k in produced if k in first_seen]
            encodes = after["chunks_encoded"][fmt] - before["chunks_encoded"][fmt]
            relay_lat = after["latency_samples_s"][-chunks:]
            emit(bench="relay_viewers", format=fmt, viewers=viewers, height=h, width=w, chunks=chunks,
                 encodes_per_chunk=round(encodes / chunks, 3),
                 first_byte_latency_ms_p50=round(float(np.percentile(lat, 50)) * 1000, 1),
                 first_byte_latency_ms_p99=round(float(np.percentile(lat, 99)) * 1000, 1),
                 relay_handoff_latency_ms_p50=round(float(np.percentile(relay_lat, 50)) * 1000, 1),
                 encode_ms_p50=round(after["encode_ms"][fmt]["p50"], 1),
                 bytes_out_per_chunk=int((after["bytes_out"][fmt] - before["bytes_out"][fmt]) / chunks),
                 wall_s=round(wall, 2))
            ray.kill(actor)
        serve.delete("bench-relay")
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer chunks, tiny size only")
    parser.add_argument("--skip-viewers", action="store_true", help="encoders only (no Ray)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sizes = [(128, 128)] if args.quick else [(128, 128), (384, 640)]
    bench_encode(sizes, chunks=3 if args.quick else 5)
    if not args.skip_viewers:
        bench_viewers([1, 4, 16], chunks=4 if args.quick else 8, formats=["mp4", "msgpack"], h=128, w=128, period_s=0.25)


if __name__ == "__main__":
    main()
