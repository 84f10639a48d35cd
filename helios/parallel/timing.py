"""Optional timing of the named TP collectives (off by default; one `is None` check when off).

`enable_comm_timing(device)` installs a process-wide `CommTimer`; every collective in
helios.parallel.comm then records its name, payload bytes and time: wall time around the
blocking call on CPU (gloo), CUDA events around it on GPU (the NCCL kernel's time on the
stream, which includes waiting for the slowest rank). `summary()` resolves the events
(one device sync) and groups by name.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class CollectiveStats:
    """Totals of one named collective since the last reset."""

    name: str
    calls: int = 0
    seconds: float = 0.0
    bytes: int = 0

    @property
    def mean_ms(self) -> float:
        return 1000.0 * self.seconds / self.calls if self.calls else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "calls": self.calls, "total_ms": round(1000.0 * self.seconds, 4),
                "mean_ms": round(self.mean_ms, 4), "bytes": self.bytes}


class CommTimer:
    """Records (name, bytes, time) for each timed collective."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._done: list[tuple[str, int, float]] = []
        self._events: list[tuple[str, int, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def time(self, name: str, tensor: torch.Tensor) -> Iterator[None]:
        """Time the collective issued inside the block on `tensor`."""
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, nbytes, start, end))
            return
        t0 = time.perf_counter()
        yield
        self._done.append((name, nbytes, time.perf_counter() - t0))

    def reset(self) -> None:
        self._done.clear()
        self._events.clear()

    def summary(self) -> dict[str, CollectiveStats]:
        """Per-name totals (synchronises the device once if CUDA events are pending)."""
        if self._events:
            torch.cuda.synchronize()
            for name, nbytes, start, end in self._events:
                self._done.append((name, nbytes, start.elapsed_time(end) / 1000.0))
            self._events.clear()
        stats: dict[str, CollectiveStats] = {}
        for name, nbytes, seconds in self._done:
            s = stats.setdefault(name, CollectiveStats(name))
            s.calls += 1
            s.seconds += seconds
            s.bytes += nbytes
        return stats


ACTIVE: CommTimer | None = None
"""The installed timer; helios.parallel.comm checks it before each collective."""


def enable_comm_timing(device: torch.device | str = "cpu") -> CommTimer:
    """Install (or return the installed) process-wide timer."""
    global ACTIVE
    if ACTIVE is None:
        ACTIVE = CommTimer(device)
    return ACTIVE


def disable_comm_timing() -> None:
    global ACTIVE
    ACTIVE = None
