"""Session runtime benchmarks (real clock); each result is one JSON line on stdout.

1. pacing: a generator faster than real time, frames released one by one at 24 fps:
   release interval p50/p99/max against the period, effective fps / fps.
2. slow: a generator at 1.5x the chunk duration: effective fps / fps (expect ~0.67) and
   the smallest release interval / period (expect ~1: stalls, never bursts).
3. commands: submit -> ack latency (p50/p99 ms) while the test pattern streams.
4. prompt_latency: set_prompt while running -> first released frame drawn with the new
   prompt, in chunk durations (lookahead 1: expect between 1 and 2).
5. testpattern: ms to draw one 33-frame chunk at 128x128 and 384x640, ratio to real time.

Run: `.venv/bin/python bench/bench_runtime.py [--quick]` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helios.models.testpattern import TestPatternEngine, TestPatternModel  # noqa: E402
from helios.runtime import MemorySink, MonotonicClock, Session, VideoModel, get_ctx  # noqa: E402

FPS, N = 24.0, 33


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


class Frames(VideoModel):
    """Emits precomputed chunks, optionally taking `gen_s` per chunk (an idle wait standing in for work)."""

    fps = FPS

    def __init__(self, chunks: int, gen_s: float = 0.0) -> None:
        self.chunks, self.gen_s = chunks, gen_s
        self.frames = np.zeros((N, 64, 64, 3), dtype=np.uint8)

    def start_session(self) -> None:
        ctx = get_ctx()
        stop = threading.Event()
        for i in range(self.chunks):
            if ctx.should_stop():
                return
            if self.gen_s:
                stop.wait(self.gen_s)
            ctx.emit_block(self.frames, chunk=i)


def pacing(chunks: int) -> None:
    clock = MonotonicClock()
    sink = MemorySink(clock)
    session = Session(Frames(chunks), sink, clock=clock).start()
    fps_seen = []
    while not session.wait_ended(0.5):
        fps_seen.append(session.effective_fps())
    session.join(10)
    iv = np.diff(sink.release_times) * 1000.0
    period = 1000.0 / FPS
    emit(bench="pacing", frames=len(sink.release_times), period_ms=round(period, 3),
         interval_p50_ms=round(float(np.percentile(iv, 50)), 3), interval_p99_ms=round(float(np.percentile(iv, 99)), 3),
         interval_max_ms=round(float(iv.max()), 3), p99_over_period=round(float(np.percentile(iv, 99)) / period, 4),
         effective_fps_over_fps=round(max(fps_seen[2:] or [0.0]) / FPS, 4))


def slow(chunks: int) -> None:
    clock = MonotonicClock()
    sink = MemorySink(clock)
    gen_s = 1.5 * N / FPS
    session = Session(Frames(chunks, gen_s=gen_s), sink, clock=clock).start()
    fps_seen = []
    while not session.wait_ended(0.25):
        fps_seen.append(session.effective_fps())
    session.join(10)
    t = np.array(sink.release_times)
    iv = np.diff(t)
    cycle = float(np.mean(np.diff(t[::N])))  # time from one chunk's first frame to the next's
    emit(bench="slow", gen_over_chunk_duration=1.5, frames=len(t), expected_fps_ratio=round(1 / 1.5, 4),
         shown_fps_over_fps=round((N / FPS) / cycle, 4),
         effective_fps_over_fps=round(float(np.mean(fps_seen[16:])) / FPS, 4),
         min_interval_over_period=round(float(iv.min()) * FPS, 4),
         stalls=int((iv > 2.0 / FPS).sum()))


def commands_and_prompt_latency(n_cmds: int) -> None:
    clock = MonotonicClock()
    sink = MemorySink(clock)
    session = Session(TestPatternModel(), sink, clock=clock).start()
    session.call({"command": "set_prompt", "args": {"prompt": "first"}})
    session.call({"command": "start"})
    sink.wait_for_frames(N + 5)
    lat = []
    for i in range(n_cmds):
        t0 = time.perf_counter()
        session.call({"command": "get_state", "id": str(i)})
        lat.append((time.perf_counter() - t0) * 1000.0)
    emit(bench="commands", n=n_cmds, ack_p50_ms=round(float(np.percentile(lat, 50)), 3),
         ack_p99_ms=round(float(np.percentile(lat, 99)), 3))
    # Prompt latency, measured at 3 points inside a chunk's playback.
    ratios = []
    for k, frac in enumerate((0.1, 0.5, 0.9)):
        sink.wait_until(lambda: sink.blocks[-1].info["frame_in_chunk"] == int(frac * N), 30, "mid-chunk")
        t0 = clock.now()
        prompt = f"prompt {k}"
        session.call({"command": "set_prompt", "args": {"prompt": prompt}})
        sink.wait_until(lambda: sink.blocks[-1].info["prompt"] == prompt, 30, "new prompt on screen")
        ratios.append((sink.release_times[-1] - t0) / (N / FPS))
    session.stop()
    session.join(10)
    emit(bench="prompt_latency", lookahead=1, in_chunk_durations=[round(r, 3) for r in ratios])


def testpattern(reps: int) -> None:
    for h, w in ((128, 128), (384, 640)):
        eng = TestPatternEngine(h, w)
        eng.set_prompt("a red fox running through snowy woods at dawn")
        eng.next_chunk()
        t0 = time.perf_counter()
        for _ in range(reps):
            eng.next_chunk()
        ms = (time.perf_counter() - t0) * 1000.0 / reps
        emit(bench="testpattern", height=h, width=w, chunk_ms=round(ms, 2), realtime_ratio=round((N / FPS * 1000.0) / ms, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer chunks and repetitions")
    args = ap.parse_args()
    q = args.quick
    testpattern(2 if q else 5)
    pacing(3 if q else 6)
    slow(3 if q else 5)
    commands_and_prompt_latency(50 if q else 200)


if __name__ == "__main__":
    main()
