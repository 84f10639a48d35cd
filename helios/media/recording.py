"""The session recording: the shared fragmented-MP4 chunks appended to a file as they come.

The file is a fragmented MP4 (init segment, then moof+mdat pairs) on its own timeline
starting at 0, so it plays in PyAV, ffmpeg and browsers while it grows and after it ends.
A reader of a growing file takes `playable_length` bytes (whole fragments only); a
`RecordingStore` deletes each recording `retention_s` after its session ended. Files are
reached through fsspec (`helios.media.storage`): a local folder or any shared store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import time
from typing import IO

from helios.media.mp4 import Mp4Chunk, Mp4Timeline
from helios.media.storage import RecordingStorage

logger = logging.getLogger(__name__)


class RecordingWriter:
    """Appends encoded chunks to a file; the first append writes the init segment.

    `RecordingWriter(path)` writes a local file; `RecordingWriter(name, file)` writes to an
    already open binary file (`RecordingStorage.create`), `name` being what logs show.
    """

    def __init__(self, path: str | os.PathLike, file: IO[bytes] | None = None):
        self.path = str(path)
        if file is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            file = open(self.path, "wb")  # noqa: SIM115 - lives as long as the recording
        self._file = file
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
    """`playable_prefix` of a local file."""
    with open(path, "rb") as f:
        return playable_prefix(f, os.fstat(f.fileno()).st_size)


def playable_prefix(f: IO[bytes], size: int) -> int:
    """Bytes of the first `size` of `f` that end on a whole box after the init segment (`moov`)
    or a fragment's `mdat`: a prefix that plays. 0 when not even the init segment is complete.

    Reads only the box headers (8-16 bytes per box), so it is cheap however long the
    recording, and it is right whichever process is writing the file.
    """
    good = 0
    pos = 0
    while pos + 8 <= size:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:  # shorter than `size` said (deleted or truncated meanwhile)
            break
        box_size, box_type = struct.unpack(">I4s", header)
        if box_size == 1:
            wide = f.read(8)
            if pos + 16 > size or len(wide) < 8:
                break
            (box_size,) = struct.unpack(">Q", wide)
        if box_size < 8 or pos + box_size > size:  # 0 (to the end), malformed, or still being written
            break
        pos += box_size
        if box_type in (b"moov", b"mdat"):
            good = pos
    return good


_SESSION_DIR = re.compile(r"[0-9a-f]{32}")
"""A session's folder name (its id); nothing else in the folder is ever deleted."""


class RecordingStore:
    """The recordings at one `RecordingStorage` (`<root>/<session_id>/recording.mp4`) and their retention.

    `finished(session_id)` schedules the deletion of a recording `retention_s` after its
    session ended (0: at once). `expired()` lists recordings nobody scheduled (a replica
    restarted) whose files have been untouched for `retention_s`: the caller deletes those
    whose session is gone, so no recording outlives its retention by more than a sweep period.
    Scheduled deletions run in a thread (fsspec calls block).
    """

    def __init__(self, storage: RecordingStorage | str | os.PathLike, retention_s: float):
        self.storage = storage if isinstance(storage, RecordingStorage) else RecordingStorage(str(storage))
        self.retention_s = float(retention_s)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._deleting: set[asyncio.Future] = set()
        self.deleted = 0

    @property
    def root(self) -> str:
        return self.storage.root

    def path(self, session_id: str) -> str:
        return self.storage.path(session_id)

    def finished(self, session_id: str) -> None:
        """The session's recording is complete: delete it after the retention (on the running loop)."""
        old = self._timers.pop(session_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[session_id] = loop.call_later(self.retention_s, self._expire, session_id)

    def _expire(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        task = asyncio.ensure_future(asyncio.to_thread(self._delete_logged, session_id))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    def _delete_logged(self, session_id: str) -> None:
        try:
            self.delete(session_id)
        except OSError as exc:  # the store refused now: the sweep of expired recordings retries it
            logger.warning("deleting the recording of session %s at %r failed: %s", session_id, self.storage, exc)

    def delete(self, session_id: str) -> bool:
        """Remove the session's recording folder; True when there was one."""
        if not self.storage.delete(session_id):
            return False
        self.deleted += 1
        logger.info("recording of session %s deleted (retention %.0f s)", session_id, self.retention_s)
        return True

    def expired(self, keep: set[str] = frozenset()) -> list[str]:
        """Session ids of unscheduled recordings untouched for the retention (`keep`: ids this
        process is writing); sorted."""
        cutoff = time.time() - self.retention_s
        gone = []
        for sid in self.storage.folders():
            if not _SESSION_DIR.fullmatch(sid) or sid in keep or sid in self._timers:
                continue
            mtime = self.storage.modified(sid)
            if mtime is not None and mtime <= cutoff:  # None: deleted meanwhile by another replica
                gone.append(sid)
        return sorted(gone)

    def close(self) -> None:
        """Cancel the pending deletions (the sweep of the next process takes them over)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


def stored_playable_length(storage: RecordingStorage, session_id: str) -> int:
    """`playable_prefix` of a session's recording at `storage`; 0 when there is none (yet, or any more)."""
    try:
        size = storage.size(session_id)
        with storage.open(session_id) as f:
            return playable_prefix(f, size)
    except FileNotFoundError:
        return 0
