"""The stream formats a viewer can ask for and their HTTP content types."""

from __future__ import annotations

from typing import Literal

StreamFormat = Literal["mjpeg", "mp4", "msgpack"]
FORMATS: tuple[str, ...] = ("mjpeg", "mp4", "msgpack")

MJPEG_BOUNDARY = "frame"

_MEDIA_TYPES = {
    "mjpeg": f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
    "mp4": "video/mp4",
    "msgpack": "application/x-msgpack",
}


def parse_format(fmt: str) -> str:
    """The format name, or ValueError naming the bad value and the allowed ones."""
    if fmt not in _MEDIA_TYPES:
        raise ValueError(f"format {fmt!r} is not one of {list(FORMATS)}")
    return fmt


def media_type(fmt: str) -> str:
    """Content-Type of a stream in format `fmt` (for the front door's StreamingResponse)."""
    return _MEDIA_TYPES[parse_format(fmt)]
