"""Reference-image input limits: pixel cap from the header, PNG/JPEG/WebP only, reduced decode."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from helios.models.limits import SessionLimits
from helios.pipeline.image import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeOptions,
    ImageInputError,
    decode_image_b64,
    decode_image_bytes,
)
from tests.crafted_images import encode, png_header_only, truncated_png


def test_defaults():
    assert DEFAULT_MAX_IMAGE_BYTES == 64 * 1024
    assert DEFAULT_MAX_IMAGE_PIXELS == 16_000_000


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_webp_decode(fmt):
    img = Image.new("RGB", (40, 24), (200, 30, 30))
    out = decode_image_bytes(encode(img, fmt))
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    assert abs(int(out[12, 20, 0]) - 200) < 12 and int(out[12, 20, 2]) < 50


@pytest.mark.parametrize("size", [(5000, 5000), (30000, 30000), (16_000_001, 1)])
def test_a_bomb_header_is_refused_before_decoding(size):
    # The pixel data is empty: had the decoder run, the error would be a decode failure.
    raw = png_header_only(*size)
    assert len(raw) < 100
    with pytest.raises(ImageInputError, match="max_image_pixels limit") as err:
        decode_image_bytes(raw)
    assert "could not be decoded" not in str(err.value)


def test_a_real_bomb_under_the_payload_limit_is_refused():
    """4096 x 4096 of one grey compresses to a few KB: the byte limit alone would let it in."""
    raw = encode(Image.new("L", (4096, 4096), 128), "PNG", optimize=True)
    assert len(raw) < DEFAULT_MAX_IMAGE_BYTES
    with pytest.raises(ImageInputError, match=r"4096x4096 = 16777216 pixels is over the max_image_pixels limit of 16000000"):
        decode_image_b64(base64.b64encode(raw).decode())


def test_the_pixel_cap_is_configurable():
    raw = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image_bytes(raw, ImageDecodeOptions(max_pixels=10_000)).shape == (100, 100, 3)
    with pytest.raises(ImageInputError, match="100x100 = 10000 pixels is over the max_image_pixels limit of 9999"):
        decode_image_bytes(raw, ImageDecodeOptions(max_pixels=9_999))


def test_session_limits_decode_under_their_own_image_limits():
    limits = SessionLimits(max_image_bytes=2048, max_image_pixels=9_999)
    assert limits.image_options((64, 32)) == ImageDecodeOptions(2048, 9_999, (64, 32))
    raw = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageInputError, match="max_image_pixels limit of 9999"):
        decode_image_b64(base64.b64encode(raw).decode(), limits.image_options())


@pytest.mark.parametrize("fmt, name", [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("ICO", "ICO")])
def test_other_formats_are_refused_by_name(fmt, name):
    raw = encode(Image.new("RGB", (32, 32), (0, 128, 255)), fmt)
    with pytest.raises(ImageInputError, match=f"image_b64: {name} images are not accepted; send PNG, JPEG or WebP"):
        decode_image_bytes(raw)


def test_unknown_bytes_are_refused():
    with pytest.raises(ImageInputError, match="not a recognisable image; send PNG, JPEG or WebP"):
        decode_image_bytes(b"hello world, this is not an image")


def test_a_truncated_png_is_refused():
    with pytest.raises(ImageInputError, match="PNG image could not be decoded.*truncated or damaged"):
        decode_image_bytes(truncated_png())


def test_a_truncated_jpeg_is_refused():
    noisy = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    raw = encode(Image.fromarray(noisy), "JPEG", quality=90)
    with pytest.raises(ImageInputError, match="JPEG image could not be decoded"):
        decode_image_bytes(raw[: len(raw) // 2])


def test_a_large_jpeg_is_drafted_at_a_reduced_scale_that_still_covers_the_target():
    bands = np.repeat(np.array([20, 90, 160, 230], dtype=np.uint8), 512)  # 4 vertical bands
    img = Image.fromarray(np.tile(bands, (2048, 1)), mode="L")  # grey: 64 KB holds 2048 x 2048
    raw = encode(img, "JPEG", quality=50)
    assert len(raw) < DEFAULT_MAX_IMAGE_BYTES
    full = decode_image_bytes(raw)
    small = decode_image_bytes(raw, ImageDecodeOptions(target_size=(640, 384)))
    assert full.shape == (2048, 2048, 3)
    assert small.shape == (1024, 1024, 3)  # libjpeg decoded at 1/2: still >= 640 x 384 after the centre crop
    assert np.abs(small[::64, ::64].astype(int) - full[::128, ::128].astype(int)).mean() < 8


def test_a_large_png_is_reduced_before_converting():
    img = Image.new("RGB", (2000, 1200), (10, 200, 10))
    out = decode_image_bytes(encode(img, "PNG"), ImageDecodeOptions(target_size=(640, 384)))
    assert out.shape == (400, 667, 3)  # reduce(3): covers 640 x 384
    assert tuple(out[200, 300]) == (10, 200, 10)


def test_a_small_image_is_not_reduced():
    img = Image.new("RGB", (320, 200), (1, 2, 3))
    assert decode_image_bytes(encode(img, "PNG"), ImageDecodeOptions(target_size=(640, 384))).shape == (200, 320, 3)
