"""MJPEG over HTTP (multipart/x-mixed-replace): one JPEG part per frame.

A chunk is encoded once into its list of parts; every viewer gets the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from helios.media.formats import MJPEG_BOUNDARY
from helios.media.mp4 import check_frames


def encode_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    """One RGB uint8 (H, W, 3) frame as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(frame, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def multipart_part(jpeg: bytes, boundary: str = MJPEG_BOUNDARY) -> bytes:
    """One multipart part (boundary line, headers, body, CRLF) holding `jpeg`."""
    head = f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return head + jpeg + b"\r\n"


def closing_boundary(boundary: str = MJPEG_BOUNDARY) -> bytes:
    """The final `--boundary--` line that ends a multipart stream."""
    return f"--{boundary}--\r\n".encode()


def encode_parts(frames: np.ndarray, quality: int = 80) -> list[bytes]:
    """A chunk of frames as ready-to-send multipart parts, one per frame."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")
    check_frames(frames)
    return [multipart_part(encode_jpeg(frame, quality)) for frame in frames]


def split_parts(data: bytes, boundary: str = MJPEG_BOUNDARY) -> list[bytes]:
    """The JPEG bodies of a multipart stream (for clients and tests); a trailing partial part is ignored."""
    marker = f"--{boundary}".encode()
    bodies: list[bytes] = []
    pos = 0
    while True:
        start = data.find(marker, pos)
        if start < 0:
            break
        head_end = data.find(b"\r\n\r\n", start)
        if head_end < 0:
            break
        headers = data[start + len(marker) : head_end].decode("latin-1")
        if headers.startswith("--"):
            break  # closing boundary
        length = None
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body_start = head_end + 4
        if length is None:
            nxt = data.find(marker, body_start)
            if nxt < 0:
                break
            bodies.append(data[body_start:nxt].rstrip(b"\r\n"))
            pos = nxt
            continue
        if body_start + length > len(data):
            break
        bodies.append(data[body_start : body_start + length])
        pos = body_start + length
    return bodies
