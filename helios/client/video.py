"""Write streamed frames to an .mp4 with PyAV (libx264), one chunk at a time."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)


class Mp4Writer:
    """An H.264 .mp4 file that grows as chunks arrive; opens on the first frames it gets.

    Frames must all have the same size; odd sizes are padded by one pixel (yuv420p needs
    even width and height).
    """

    def __init__(self, path: str | Path, fps: float | None = None, crf: int = 18) -> None:
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._shape: tuple[int, int] | None = None

    def _open(self, height: int, width: int, fps: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width = width + width % 2
        stream.height = height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = stream
        self._shape = (height, width)

    def write(self, frames: np.ndarray, fps: float | None = None) -> None:
        """Append uint8 (n, H, W, 3) frames."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames: expected uint8 (n, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2], self.fps or fps or 24)
        if frames.shape[1:3] != self._shape:
            raise ValueError(f"frames: size changed from {self._shape} to {tuple(frames.shape[1:3])} mid-stream")
        h, w = self._shape
        for frame in frames:
            if h % 2 or w % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (safe to call twice)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        log.info("wrote %d frames to %s", self.frames_written, self.path)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
