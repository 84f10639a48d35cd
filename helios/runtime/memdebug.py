"""What a long-lived process holds: RSS, live Python objects by type, tracemalloc's top sites, malloc_trim.

The soak (bench/soak.py, docs/soak.md) asks the relay, front door, registry and shard
workers for this through their `memory_report` methods, to tell a leak (objects that keep
adding up) from memory the C allocator keeps for reuse (RSS that `malloc_trim(0)` returns).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import tracemalloc
from collections import Counter
from typing import Any

_MB = 2**20
_baseline: tracemalloc.Snapshot | None = None


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return 0.0


def malloc_trim() -> float | None:
    """glibc's malloc_trim(0): give free heap pages back to the OS. MB of RSS it returned (None: not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    before = rss_mb()
    trim(0)
    return round(before - rss_mb(), 1)


def object_counts(top: int = 15) -> dict[str, int]:
    """The `top` most numerous types among the objects the garbage collector tracks."""
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    return dict(counts.most_common(top))


def tracemalloc_top(top: int = 10) -> list[str]:
    """Allocation sites grown most since tracing began (the first call starts it and returns [])."""
    global _baseline
    if not tracemalloc.is_tracing():
        tracemalloc.start(8)
        _baseline = tracemalloc.take_snapshot()
        return []
    snap = tracemalloc.take_snapshot()
    stats = snap.compare_to(_baseline, "lineno") if _baseline is not None else snap.statistics("lineno")
    return [str(s) for s in stats[:top]]


def torch_memory() -> dict[str, float]:
    """The CUDA caching allocator's MB (allocated, reserved) when torch is loaded and has a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {"cuda_allocated_mb": torch.cuda.memory_allocated() / _MB, "cuda_reserved_mb": torch.cuda.memory_reserved() / _MB}


def memory_report(trim: bool = False, objects: bool = False, trace: bool = False) -> dict[str, Any]:
    """RSS (and after a collection and, with `trim`, malloc_trim), optionally objects by type and tracemalloc's top."""
    out: dict[str, Any] = {"pid": os.getpid(), "rss_mb": round(rss_mb(), 1)}
    out["gc_collected"] = gc.collect()
    out["rss_after_gc_mb"] = round(rss_mb(), 1)
    out["trimmed_mb"] = malloc_trim() if trim else None
    out["rss_after_trim_mb"] = round(rss_mb(), 1)
    if objects:
        out["objects"] = object_counts()
    if trace:
        out["tracemalloc_top"] = tracemalloc_top()
    out.update(torch_memory())
    return out
