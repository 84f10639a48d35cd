"""Real-time pacing or none: the one switch between a served stream and a benchmark's free run.

`pacing_options` turns a pacing name into the `Session` keywords that implement it, so the
serving layer (deployments/session_actor.py) and tests share one definition. "off" is for
benchmarks only (bench/bench_serve.py `fps_ratio`): viewers then get chunks as fast as the model
makes them, never at the stream's fps.
"""

from __future__ import annotations

from typing import Any, Literal

from helios.runtime.clock import Clock, MonotonicClock, UnpacedClock

Pacing = Literal["realtime", "off"]
PACINGS: tuple[str, ...] = ("realtime", "off")


def pacing_options(pacing: Pacing = "realtime", clock: Clock | None = None) -> dict[str, Any]:
    """`Session` keywords (`clock`, `just_in_time`) for `pacing` on top of `clock` (default: the real clock).

    "realtime": frames released at the stream's fps, each chunk begun just in time.
    "off": every wait returns at once and chunks are begun back to back (just-in-time starts
    plan against a playback schedule that no longer exists, so they are switched off too).
    """
    base = clock if clock is not None else MonotonicClock()
    if pacing == "realtime":
        return {"clock": base, "just_in_time": True}
    if pacing == "off":
        return {"clock": UnpacedClock(base), "just_in_time": False}
    raise ValueError(f"pacing: must be one of {', '.join(PACINGS)}, got {pacing!r}")
