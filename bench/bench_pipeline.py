"""Chunk time by stage for the Helios stream pipeline; prints one JSON line per measurement.

CPU (default): the tiny random pipeline at 128x128, 33 frames per chunk.
GPU (--gpu): the 14B-Distilled architecture with random weights at 384x640 (TP=1, bf16):
seconds per chunk, frames per second and FLOP utilisation next to the published 19.5 FPS.

    python bench/bench_pipeline.py --chunks 5
    python bench/bench_pipeline.py --gpu --chunks 5 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PUBLISHED_FPS_H100 = 19.5
CHUNK_PFLOP_DISTILLED_111 = 0.55
"""DESIGN section 3: one Distilled [1,1,1] chunk at 384x640 is about 0.55 PFLOP (scales with steps)."""


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def run_stream(pipe, chunks: int, label: str, warmup: int = 1) -> dict:
    pipe.reset(0)
    pipe.set_prompt("a lighthouse on a cliff at dusk, waves crashing")
    for _ in range(warmup):
        pipe.next_chunk()
    rows = []
    for _ in range(chunks):
        result = pipe.next_chunk()
        rows.append(result.timings_ms)
    stages = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    total_s = stages["total"] / 1000.0
    fps = pipe.frames_per_chunk / total_s
    summary = {
        "bench": "pipeline_chunk", "config": label, "chunks": chunks,
        "height": pipe.height, "width": pipe.width, "frames_per_chunk": pipe.frames_per_chunk,
        "median_ms": {k: round(v, 2) for k, v in stages.items()},
        "share_of_total": {k: round(v / stages["total"], 3) for k, v in stages.items() if k != "total"},
        "seconds_per_chunk": round(total_s, 4), "fps": round(fps, 2), "realtime_ratio": round(fps / pipe.fps, 3),
    }
    emit(**summary)
    return summary


def bench_cpu(args) -> None:
    import torch

    from helios.pipeline import HeliosStreamPipeline
    from helios.pipeline.tiny import make_tiny_pipeline

    torch.set_num_threads(args.threads)
    folder = make_tiny_pipeline(Path(args.tiny_dir), seed=0)
    for steps in ([1, 1, 1], [2, 2, 2]):
        pipe = HeliosStreamPipeline.from_pretrained(folder, height=128, width=128, pyramid_steps=steps)
        run_stream(pipe, args.chunks, f"tiny-cpu steps={steps} threads={args.threads}")
    # Text cache: encoding a new prompt vs a cached one (ratio, same run).
    t0 = time.perf_counter()
    pipe.text.get("a brand new prompt never seen")
    new_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    pipe.text.get("a brand new prompt never seen")
    cached_ms = (time.perf_counter() - t0) * 1000
    emit(bench="text_cache", new_prompt_ms=round(new_ms, 3), cached_ms=round(cached_ms, 4),
         speedup=round(new_ms / max(cached_ms, 1e-6), 1))


def bench_gpu(args) -> None:
    """14B-Distilled geometry with random weights: build the folder on the GPU machine (no download)."""
    import torch

    if not torch.cuda.is_available():
        emit(bench="pipeline_gpu", status="not measured", reason="no CUDA device")
        return
    from helios.pipeline import HeliosStreamPipeline

    if not args.folder:
        emit(bench="pipeline_gpu", status="not measured",
             reason="pass --folder with a 14B-Distilled-format pipeline folder (random or real weights)")
        return
    pipe = HeliosStreamPipeline.from_pretrained(args.folder, dtype="bfloat16", device="cuda", height=384, width=640,
                                                pyramid_steps=[1, 1, 1])
    summary = run_stream(pipe, args.chunks, "14b-distilled random bf16 TP=1 steps=[1,1,1]")
    pflops = CHUNK_PFLOP_DISTILLED_111 / summary["seconds_per_chunk"]
    emit(bench="pipeline_gpu_vs_published", fps=summary["fps"], published_fps_h100=PUBLISHED_FPS_H100,
         ratio_to_published=round(summary["fps"] / PUBLISHED_FPS_H100, 3),
         achieved_tflops=round(pflops * 1000, 1), mfu=round(pflops * 1000 / args.peak_tflops, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny-dir", default=os.path.join(tempfile.gettempdir(), "helios-bench-tiny"))
    parser.add_argument("--gpu", action="store_true", help="run the 14B-Distilled GPU measurement instead")
    parser.add_argument("--folder", help="14B pipeline folder for --gpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error(f"--chunks must be >= 1, got {args.chunks}")
    (bench_gpu if args.gpu else bench_cpu)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
