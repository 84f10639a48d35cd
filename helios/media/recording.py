"""The session recording: the shared fragmented-MP4 chunks appended to a file as they come.

The file is a fragmented MP4 (init segment, then moof+mdat pairs) on its own timeline
starting at 0, so it plays in PyAV, ffmpeg and browsers while it grows and after it ends.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from helios.media.mp4 import Mp4Chunk, Mp4Timeline

logger = logging.getLogger(__name__)


class RecordingWriter:
    """Appends encoded chunks to `path`; the first append writes the init segment."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - lives as long as the recording
        self._timeline = Mp4Timeline()
        self._wrote_init = False
        self.chunks = 0
        self.frames = 0
        self.closed = False

    def append(self, init_segment: bytes, chunk: Mp4Chunk) -> None:
        """Write one chunk (and the init segment before the first) and flush, so readers see whole fragments."""
        if self.closed:
            raise ValueError(f"recording {self.path} is closed")
        if not self._wrote_init:
            self._file.write(init_segment)
            self._wrote_init = True
        self._file.write(self._timeline.render(chunk))
        self._file.flush()
        self.chunks += 1
        self.frames += chunk.frames

    def close(self) -> None:
        """Finish the file (idempotent)."""
        if not self.closed:
            self._file.close()
            self.closed = True
            logger.info("recording %s closed: %d chunks, %d frames", self.path, self.chunks, self.frames)
