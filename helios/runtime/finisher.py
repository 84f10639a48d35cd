"""`ChunkFinisher`: finishes begun chunks on one thread, in the order they were begun.

A generation loop that begins chunk n+1 while chunk n still decodes needs someone to wait
for chunk n's frames and hand them on, without making the loop wait. One thread and one
FIFO keep the order; a semaphore bounds how many chunks are begun and not yet finished
(`depth`: 1 is the synchronous loop, 2 overlaps one decode with the next chunk).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_CLOSE = object()


class ChunkFinisher:
    """Runs `finish(*item)` for every `put(*item)`, in order, on its own thread."""

    def __init__(self, finish: Callable[..., None], *, depth: int, name: str,
                 initializer: Callable[[], Any] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth: must be >= 1, got {depth}")
        self.depth = depth
        self._finish = finish
        self._initializer = initializer
        self._slots = threading.Semaphore(depth)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def reserve(self) -> None:
        """Wait until fewer than `depth` chunks are unfinished; raises the first finishing error."""
        self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            raise self._error

    def release(self) -> None:
        """Give back a reservation that was not used for a chunk."""
        self._slots.release()

    def put(self, *item: Any) -> None:
        """Hand over a begun chunk (after `reserve()`); it is finished after every earlier one."""
        self._queue.put(item)

    def close(self) -> BaseException | None:
        """Finish everything handed over, stop the thread, and return the first error (or None)."""
        self._queue.put(_CLOSE)
        self._thread.join()
        return self._error

    def _run(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            try:
                if self._error is None:  # after a failure the stream is over: drop, do not deliver
                    self._finish(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the generation thread
                self._error = exc
            finally:
                self._slots.release()
