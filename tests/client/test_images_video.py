"""Client-side image preparation (fits 64 KB) and mp4 writing, checked by decoding the results."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
from PIL import Image

from helios.client.images import load_image, prepare_image
from helios.client.video import Mp4Writer
from helios.pipeline.image import decode_image_b64


def test_noisy_large_image_is_resized_and_kept_under_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)  # incompressible: forces low quality
    path = tmp_path / "noise.png"
    Image.fromarray(noisy).save(path)
    b64 = prepare_image(path, (640, 384))
    raw = base64.b64decode(b64)
    assert len(raw) <= 64 * 1024
    decoded = decode_image_b64(b64)  # the server's own decoder accepts it
    assert decoded.shape[2] == 3 and decoded.shape[1] / decoded.shape[0] == pytest.approx(640 / 384, rel=0.02)


def test_smooth_image_keeps_exact_model_resolution_and_colour():
    arr = np.zeros((300, 300, 3), np.uint8)
    arr[..., 0] = 200
    b64 = prepare_image(arr, (128, 64))
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
    assert out.shape == (64, 128, 3)
    assert abs(int(out[..., 0].mean()) - 200) <= 3


def test_sources_and_bad_input():
    rgba = np.zeros((10, 12, 4), np.float32) + 0.5
    assert load_image(rgba).shape == (10, 12, 3) and load_image(rgba).dtype == np.uint8
    assert load_image(Image.new("L", (5, 4))).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="not a decodable image"):
        load_image(b"definitely not an image")
    with pytest.raises(ValueError, match="file not found"):
        load_image("/nonexistent/cat.png")
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="size"):
        prepare_image(np.zeros((4, 4, 3), np.uint8), (0, 10))


def test_mp4_writer_roundtrip_frame_count_and_odd_sizes(tmp_path):
    path = tmp_path / "out.mp4"
    frames = np.zeros((33, 31, 45, 3), np.uint8)
    frames[:, :, :, 1] = np.arange(33, dtype=np.uint8)[:, None, None] * 7
    with Mp4Writer(path) as w:
        w.write(frames, fps=24)
        w.write(frames, fps=24)
        with pytest.raises(ValueError, match="size changed"):
            w.write(np.zeros((1, 8, 8, 3), np.uint8))
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = c.streams.video[0].average_rate
    assert len(decoded) == 66
    assert decoded[0].shape == (32, 46, 3)
    assert float(rate) == pytest.approx(24)
    assert abs(int(decoded[10][5, 5, 1]) - 70) <= 6  # content survives the encode
