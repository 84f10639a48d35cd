"""The session recording: the shared fragmented-MP4 chunks appended to a file as they come.

The file is a fragmented MP4 (init segment, then moof+mdat pairs) on its own timeline
starting at 0, so it plays in PyAV, ffmpeg and browsers while it grows and after it ends.
A reader of a growing file takes `playable_length` bytes (whole fragments only); a
`RecordingStore` deletes each recording `retention_s` after its session ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import struct
import time
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
        self.closed_at: float | None = None
        """time.time() when closed: the session's end, from which its retention counts."""

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
            self.closed_at = time.time()
            logger.info("recording %s closed: %d chunks, %d frames", self.path, self.chunks, self.frames)


def playable_length(path: str | os.PathLike) -> int:
    """Bytes of `path` that end on a whole box after the init segment (`moov`) or a fragment's
    `mdat`: a prefix that plays. 0 when not even the init segment is complete.

    Reads only the box headers (8-16 bytes per box), so it is cheap however long the
    recording, and it is right whichever process is writing the file.
    """
    good = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            box_size, box_type = struct.unpack(">I4s", f.read(8))
            if box_size == 1:
                if pos + 16 > size:
                    break
                (box_size,) = struct.unpack(">Q", f.read(8))
            if box_size < 8 or pos + box_size > size:  # 0 (to the end), malformed, or still being written
                break
            pos += box_size
            if box_type in (b"moov", b"mdat"):
                good = pos
    return good


_SESSION_DIR = re.compile(r"[0-9a-f]{32}")
"""A session's folder name (its id); nothing else in the folder is ever deleted."""


class RecordingStore:
    """The folder of recordings (`<root>/<session_id>/recording.mp4`) and their retention.

    `finished(session_id)` schedules the deletion of a recording `retention_s` after its
    session ended (0: at once). `expired()` lists recordings nobody scheduled (a replica
    restarted) whose files have been untouched for `retention_s`: the caller deletes those
    whose session is gone, so no recording outlives its retention by more than a sweep period.
    """

    def __init__(self, root: str | os.PathLike, retention_s: float):
        self.root = Path(root).expanduser()
        self.retention_s = float(retention_s)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.deleted = 0

    def path(self, session_id: str) -> Path:
        return self.root / session_id / "recording.mp4"

    def finished(self, session_id: str) -> None:
        """The session's recording is complete: delete it after the retention (on the running loop)."""
        old = self._timers.pop(session_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[session_id] = loop.call_later(self.retention_s, self._expire, session_id)

    def _expire(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        self.delete(session_id)

    def delete(self, session_id: str) -> bool:
        """Remove the session's recording folder; True when there was one."""
        folder = self.root / session_id
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return False
        self.deleted += 1
        logger.info("recording of session %s deleted (retention %.0f s)", session_id, self.retention_s)
        return True

    def expired(self, keep: set[str] = frozenset()) -> list[str]:
        """Session ids of unscheduled recordings untouched for the retention (`keep`: ids this
        process is writing); sorted."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - self.retention_s
        gone = []
        for folder in self.root.iterdir():
            sid = folder.name
            if not _SESSION_DIR.fullmatch(sid) or sid in keep or sid in self._timers or not folder.is_dir():
                continue
            try:
                mtime = max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)
            except FileNotFoundError:  # deleted meanwhile by another replica
                continue
            if mtime <= cutoff:
                gone.append(sid)
        return sorted(gone)

    def close(self) -> None:
        """Cancel the pending deletions (the sweep of the next process takes them over)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
