"""Reference-image input: decode user bytes safely and bring them to the model resolution."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024
"""Payload limit for `set_image` (decoded bytes), as the hosted Helios protocol documents."""


class ImageInputError(ValueError):
    """The image payload is missing, too big, or not an image."""


def strip_data_url(payload: str) -> str:
    """Drop a `data:image/...;base64,` prefix if present."""
    if payload.startswith("data:"):
        _, sep, rest = payload.partition(",")
        if not sep:
            raise ImageInputError("image_b64: data URL has no ',' separating header and data")
        return rest
    return payload


def decode_image_b64(payload: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """Base64 (or data URL) → uint8 RGB array (H, W, 3). Raises ImageInputError naming the problem."""
    if not isinstance(payload, str) or not payload.strip():
        raise ImageInputError("image_b64: empty image payload")
    data = strip_data_url(payload.strip())
    # Reject before decoding: base64 inflates by 4/3, so this bounds the work we do.
    if len(data) > (max_bytes * 4) // 3 + 8:
        raise ImageInputError(
            f"image_b64: image is about {len(data) * 3 // 4} bytes, over the {max_bytes}-byte limit; "
            "resize or compress it (JPEG) first"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"image_b64: not valid base64 ({exc})") from None
    return decode_image_bytes(raw, max_bytes=max_bytes)


def decode_image_bytes(raw: bytes, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP...) → uint8 RGB array (H, W, 3)."""
    if len(raw) > max_bytes:
        raise ImageInputError(
            f"image_b64: image is {len(raw)} bytes, over the {max_bytes}-byte limit; "
            "resize or compress it (JPEG) first"
        )
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > 64_000_000:
                raise ImageInputError(f"image_b64: image of {img.width}x{img.height} pixels is too large")
            rgb = img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(f"image_b64: not a decodable image ({exc.__class__.__name__})") from None


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (bicubic, center-crop to the target aspect first) to exactly (height, width, 3) uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageInputError(f"image: expected uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[:2]
    target = width / height
    if w / h > target:  # too wide: crop width
        new_w = max(1, round(h * target))
        x0 = (w - new_w) // 2
        image = image[:, x0 : x0 + new_w]
    elif w / h < target:  # too tall: crop height
        new_h = max(1, round(w / target))
        y0 = (h - new_h) // 2
        image = image[y0 : y0 + new_h]
    pil = Image.fromarray(np.ascontiguousarray(image))
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.BICUBIC)
    return np.asarray(pil, dtype=np.uint8).copy()


def encode_image_b64(image: np.ndarray, *, quality: int = 85, fmt: str = "JPEG") -> str:
    """uint8 (H, W, 3) → base64 string; the inverse of decode_image_b64 for tests and clients."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")
