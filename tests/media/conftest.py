"""Shared synthetic frames and one encoded session for the media tests (encoded once per test session)."""

from __future__ import annotations

import numpy as np
import pytest

from helios.media.mp4 import FragmentedMp4Encoder

H, W, N, FPS = 64, 96, 33, 24


def make_frames(chunk: int, n: int = N, h: int = H, w: int = W) -> np.ndarray:
    """A chunk whose frames differ in brightness (per frame) and hue (per chunk): easy to tell apart after lossy coding."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        base = 40 + (i * 5) % 160
        frames[i, ..., 0] = (base + xx // 4) % 256
        frames[i, ..., 1] = (base + 50 * (chunk % 3)) % 256
        frames[i, ..., 2] = (base + yy // 4 + 30 * chunk) % 256
    return frames


@pytest.fixture(scope="session")
def encoded_session():
    """Four chunks of one session through one encoder: (encoder, [frames], [Mp4Chunk])."""
    enc = FragmentedMp4Encoder(W, H, FPS)
    frames = [make_frames(k) for k in range(4)]
    chunks = [enc.encode_chunk(f) for f in frames]
    yield enc, frames, chunks
    enc.close()
