"""Bytes per chunk of each video format at the Helios size (384x640), one JSON line per content.

MJPEG (JPEG quality 80, the relay default) against H.264 fragmented MP4 (libx264
veryfast, crf 23, the relay default; the same bytes feed LL-HLS), per 33-frame chunk,
averaged over chunks 1.. (chunk 0 also pays the init segment, counted apart), and their
ratio measured in the same run. Contents: the test-pattern model's frames (moving colour
bars, text) and a smooth moving gradient with noise (closer to camera-like video).

Run: `.venv/bin/python bench/bench_formats.py [--chunks N]` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helios.media import mjpeg  # noqa: E402
from helios.media.mp4 import FragmentedMp4Encoder  # noqa: E402
from helios.models.testpattern import TestPatternEngine  # noqa: E402

H, W, N, FPS = 384, 640, 33, 24


def test_pattern_chunks(count: int) -> list[np.ndarray]:
    engine = TestPatternEngine(height=H, width=W, frames_per_chunk=N, fps=FPS)
    engine.set_prompt("a red fox running through fresh snow, golden hour")
    return [engine.next_chunk().frames for _ in range(count)]


def gradient_chunks(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = []
    for k in range(count):
        frames = np.empty((N, H, W, 3), dtype=np.uint8)
        for i in range(N):
            t = (k * N + i) / FPS
            base = 128 + 60 * np.sin(xx / 90 + t) + 40 * np.cos(yy / 70 - 0.7 * t)
            for c in range(3):
                frames[i, ..., c] = np.clip(base + 30 * c + rng.normal(0, 4, (H, W)), 0, 255)
        out.append(frames)
    return out


def measure(name: str, chunks: list[np.ndarray]) -> dict:
    enc = FragmentedMp4Encoder(W, H, FPS)
    mp4 = [enc.encode_chunk(c).nbytes for c in chunks]
    init = len(enc.init_segment)
    enc.close()
    jpeg = [sum(len(p) for p in mjpeg.encode_parts(c, 80)) for c in chunks]
    mp4_avg = float(np.mean(mp4[1:] if len(mp4) > 1 else mp4))
    jpeg_avg = float(np.mean(jpeg[1:] if len(jpeg) > 1 else jpeg))
    return {
        "bench": "format_bytes_per_chunk", "content": name, "height": H, "width": W, "frames_per_chunk": N,
        "chunks": len(chunks), "mjpeg_bytes_per_chunk": round(jpeg_avg), "h264_bytes_per_chunk": round(mp4_avg),
        "h264_init_bytes": init, "mjpeg_over_h264": round(jpeg_avg / mp4_avg, 2),
        "mjpeg_kbit_s": round(jpeg_avg * 8 * FPS / N / 1000), "h264_kbit_s": round(mp4_avg * 8 * FPS / N / 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4)
    args = parser.parse_args()
    for name, chunks in (("test-pattern", test_pattern_chunks(args.chunks)), ("gradient+noise", gradient_chunks(args.chunks))):
        print(json.dumps(measure(name, chunks)), flush=True)


if __name__ == "__main__":
    main()
