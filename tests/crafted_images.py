"""Hostile image payloads for the input-limit tests (pipeline decoder and the session protocol)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    """`image` saved in format `fmt`."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is empty: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def truncated_png(size: int = 64) -> bytes:
    """The first half of a noisy PNG (noise does not compress, so the cut lands in the pixel data)."""
    raw = encode(Image.effect_noise((size, size), 80).convert("RGB"), "PNG")
    return raw[: len(raw) // 2]
