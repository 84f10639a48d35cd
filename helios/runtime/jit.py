"""Just-in-time chunk starts: begin each chunk as late as it can still be ready when playback needs it.

A generator that runs a whole chunk ahead of playback makes every command wait behind that
chunk. Starting chunk n+1 only `lead_s()` before chunk n finishes playing keeps the chunk
being generated the next one shown, so a prompt set while chunk n plays reaches the screen
with chunk n+1 (DESIGN section 12). The lead is the recent generation time plus a margin,
and grows by the lateness whenever a chunk planned on time still came late.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field


@dataclass
class JustInTime:
    """When to begin the next chunk, from measured generation times.

    lead = max(last `window` generation times) * (1 + `margin_frac`) + `margin_s` + extra,
    where extra adds up the lateness of chunks that began on schedule and still came late
    (halved after every chunk that was on time; at most the estimate + `max_extra_s`). The max over a window (not a mean)
    because a late chunk stalls every viewer while an early one only costs a few ms of latency.
    """

    margin_s: float = 0.05
    margin_frac: float = 0.2
    window: int = 8
    max_extra_s: float = 0.25
    _durations: collections.deque = field(init=False, repr=False)
    _extra: float = field(init=False, default=0.0, repr=False)
    _begun: collections.deque = field(init=False, repr=False)
    """(begin time, on schedule) of each chunk begun and not yet ready, oldest first."""
    _lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.margin_s < 0:
            raise ValueError(f"margin_s: must be >= 0, got {self.margin_s}")
        if self.margin_frac < 0:
            raise ValueError(f"margin_frac: must be >= 0, got {self.margin_frac}")
        if self.max_extra_s < 0:
            raise ValueError(f"max_extra_s: must be >= 0, got {self.max_extra_s}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window: must be an int >= 1, got {self.window!r}")
        self._durations = collections.deque(maxlen=self.window)
        self._begun = collections.deque()
        self._lock = threading.Lock()  # chunks begin on the generation thread and may finish on another

    @property
    def estimate_s(self) -> float:
        """The generation time planned for (0.0 before the first measured chunk)."""
        with self._lock:
            return max(self._durations, default=0.0)

    @property
    def in_flight(self) -> int:
        """Chunks begun and not yet ready (more than one when the engine pipelines chunks)."""
        with self._lock:
            return len(self._begun)

    def lead_s(self) -> float:
        """How long before playback needs a chunk its generation begins."""
        with self._lock:
            return max(self._durations, default=0.0) * (1.0 + self.margin_frac) + self.margin_s + self._extra

    def start_time(self, needed_at: float | None) -> float | None:
        """When to begin a chunk needed at `needed_at` (None: playback waits for nothing, begin now)."""
        return None if needed_at is None else needed_at - self.lead_s()

    def begin(self, now: float, *, on_schedule: bool) -> None:
        """A chunk begins at `now`; `on_schedule` when it waited for its start time (not already late)."""
        with self._lock:
            self._begun.append((now, on_schedule))

    def drop(self) -> None:
        """The oldest begun chunk will never be ready (discarded, e.g. by a reset)."""
        with self._lock:
            if self._begun:
                self._begun.popleft()

    def finish(self, now: float, needed_at: float | None) -> None:
        """The oldest begun chunk is ready at `now`; playback needs it at `needed_at`."""
        with self._lock:
            if not self._begun:
                return  # the model does not wait for its start time: nothing to learn
            began, on_schedule = self._begun.popleft()
            self._durations.append(max(0.0, now - began))
            late = None if needed_at is None else now - needed_at
            if on_schedule and late is not None and late > 0:
                self._extra = min(self._extra + late, max(self._durations) + self.max_extra_s)
            else:
                self._extra *= 0.5
