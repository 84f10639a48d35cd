"""Reference images for `set_image`: load anything image-like, fit the model, stay under 64 KB.

The server refuses payloads over its limit, so the client does the resizing and JPEG
compression itself and the user never has to think about the wire size.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from helios.pipeline.image import DEFAULT_MAX_IMAGE_BYTES, resize_image

ImageSource = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]
"""A file path, encoded image bytes, a uint8/float (H, W, 3|4) array or a PIL image."""

DEFAULT_SIZE = (640, 384)
"""(width, height) of Helios when the server does not say the model's resolution."""


def load_image(source: ImageSource) -> np.ndarray:
    """Any ImageSource → uint8 RGB (H, W, 3). Raises ValueError naming what was wrong."""
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        return _decode(bytes(source), "image bytes")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"image: file not found: {str(path)!r}")
        return _decode(path.read_bytes(), str(path))
    raise ValueError(f"image: expected a path, bytes, numpy array or PIL image, got {type(source).__name__}")


def _decode(raw: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"image: {what} is not a decodable image ({exc.__class__.__name__})") from None


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image: expected an array of shape (H, W, 3), got {tuple(arr.shape)}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)  # floats in [0, 1]
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def encode_jpeg_under(image: np.ndarray, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """JPEG-encode at the best quality that fits `max_bytes`, shrinking the image if even q=20 is too big."""
    if max_bytes < 1024:
        raise ValueError(f"max_bytes: {max_bytes} is too small for any useful JPEG (need at least 1024)")
    pil = Image.fromarray(image)
    while True:
        for quality in (92, 85, 75, 65, 50, 35, 20):
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=quality, optimize=True)
            if buf.tell() <= max_bytes:
                return buf.getvalue()
        pil = pil.resize((max(8, pil.width * 3 // 4), max(8, pil.height * 3 // 4)), Image.BICUBIC)


def prepare_image(
    source: ImageSource,
    size: tuple[int, int] = DEFAULT_SIZE,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> str:
    """Load, center-crop and resize to `size` (width, height), JPEG under `max_bytes`; → base64."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size: expected positive (width, height), got {size!r}")
    image = resize_image(load_image(source), width, height)
    return base64.b64encode(encode_jpeg_under(image, max_bytes)).decode("ascii")
