"""Reference-image input: decode user bytes safely and bring them to the model resolution."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024
"""Payload limit for `set_image` (decoded bytes), as the hosted Helios protocol documents."""

DEFAULT_MAX_IMAGE_PIXELS = 16_000_000
"""Decoded-pixel cap (16 Mpx): a 64 KB PNG of one colour can declare 30,000 x 30,000 pixels,
so the byte limit alone does not bound the memory decoding takes."""

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
"""The only Pillow decoders user bytes reach (every other plugin's parser stays out of reach)."""

_MAGIC = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)


class ImageInputError(ValueError):
    """The image payload is missing, too big, not an allowed format, or not a whole image."""


def strip_data_url(payload: str) -> str:
    """Drop a `data:image/...;base64,` prefix if present."""
    if payload.startswith("data:"):
        _, sep, rest = payload.partition(",")
        if not sep:
            raise ImageInputError("image_b64: data URL has no ',' separating header and data")
        return rest
    return payload


@dataclass(frozen=True)
class ImageDecodeOptions:
    """How one user image is decoded: the limits that bound the work, and the size the model needs."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    """Largest payload, in decoded bytes."""
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Largest image (width x height), checked from its header before any pixel is decoded."""
    target_size: tuple[int, int] | None = None
    """(width, height) the model will resize to: a large image is decoded at a reduced scale that still covers it."""


DEFAULT_DECODE = ImageDecodeOptions()


def decode_image_b64(payload: str, options: ImageDecodeOptions = DEFAULT_DECODE) -> np.ndarray:
    """Base64 (or data URL) → uint8 RGB array (H, W, 3). Raises ImageInputError naming the problem."""
    max_bytes = options.max_bytes
    if not isinstance(payload, str) or not payload.strip():
        raise ImageInputError("image_b64: empty image payload")
    data = strip_data_url(payload.strip())
    # Reject before decoding: base64 inflates by 4/3, so this bounds the work we do.
    if len(data) > (max_bytes * 4) // 3 + 8:
        raise ImageInputError(
            f"image_b64: image is about {len(data) * 3 // 4} bytes, over the max_image_bytes limit of {max_bytes}; "
            "resize or compress it (JPEG) first"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"image_b64: not valid base64 ({exc})") from None
    return decode_image_bytes(raw, options)


def decode_image_bytes(raw: bytes, options: ImageDecodeOptions = DEFAULT_DECODE) -> np.ndarray:
    """PNG, JPEG or WebP bytes → uint8 RGB array (H, W, 3).

    The pixel count is checked from the header, before any pixel is decoded. With
    `options.target_size` (width, height) a large image is decoded at a reduced scale (JPEG
    `draft`, then an integer `reduce`) that still covers the target, so only the size the
    model needs is ever converted.
    """
    max_bytes, max_pixels, target_size = options.max_bytes, options.max_pixels, options.target_size
    if len(raw) > max_bytes:
        raise ImageInputError(
            f"image_b64: image is {len(raw)} bytes, over the max_image_bytes limit of {max_bytes}; "
            "resize or compress it (JPEG) first"
        )
    try:
        img = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageInputError(f"image_b64: {_not_allowed(raw)}; send PNG, JPEG or WebP") from None
    except Image.DecompressionBombError:
        raise ImageInputError(f"image_b64: image declares too many pixels; the max_image_pixels limit is {max_pixels}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageInputError(f"image_b64: the image header could not be read ({type(exc).__name__}: {exc})") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageInputError(f"image_b64: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageInputError(
                f"image_b64: image of {width}x{height} = {width * height} pixels is over the "
                f"max_image_pixels limit of {max_pixels}; resize it first"
            )
        try:
            factor = _reduce_factor((width, height), target_size)
            if factor > 1:
                img.draft("RGB", (-(-width // factor), -(-height // factor)))  # JPEG: decode at 1/2, 1/4, 1/8
            img.load()
            out: Image.Image = img
            if factor > 1:
                factor = _reduce_factor(out.size, target_size)  # what draft left to do
                if factor > 1:
                    out = out.reduce(factor)
            rgb = out.convert("RGB")
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageInputError(
                f"image_b64: the {img.format} image could not be decoded ({type(exc).__name__}: {exc}); "
                "is it truncated or damaged?"
            ) from None
        return np.asarray(rgb, dtype=np.uint8).copy()


def _reduce_factor(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The largest integer factor that shrinks `size` and still covers `target` after crop-and-resize."""
    if target is None:
        return 1
    (w, h), (tw, th) = size, target
    # resize_image scales by max(tw / w, th / h) after its centre crop: keep at least that.
    return max(1, min(w // max(1, tw), h // max(1, th)))


def _not_allowed(raw: bytes) -> str:
    head = raw[:16].lstrip()
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"{name} images are not accepted"
    return "not a recognisable image"


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
