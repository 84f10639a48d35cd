"""The knee of a load ramp: where serving stops keeping up (pure functions; bench/bench_load.py drives them).

A step (S sessions x V viewers each) passes when every session is delivered at >= `min_ratio` of
real time, the p99 chunk latency to the viewers is within one chunk duration (a viewer more than
a chunk behind has stalled once), and nothing failed. The ramp raises viewers per session until a
step fails, then sessions; the knee is the heaviest step that passed. No Ray, no HTTP: the unit
test (tests/serve/test_load_knee.py) runs these on synthetic numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Step:
    """What one load step measured."""

    sessions: int
    viewers: int
    """Viewers per session."""
    fps_ratio_min: float
    """The worst session's delivered FPS over the stream's FPS (1.0 = real time)."""
    p99_s: float | None
    """p99 of produced -> arrival at a viewer over every chunk every viewer got (None: no chunk)."""
    errors: int = 0

    @property
    def total_viewers(self) -> int:
        return self.sessions * self.viewers


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-th percentile (0..100) by linear interpolation between closest ranks; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"q: must be in 0..100, got {q}")
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def delivered_fps(arrivals: Sequence[tuple[float, int]]) -> float | None:
    """Frames per second a viewer got: the least-squares slope of frames received so far against arrival time.

    `arrivals` is (arrival time, frames) per chunk, in order. A fit over every chunk, not the first
    and last alone, so one chunk arriving early or late (a busy machine) barely moves it, while
    skipped chunks (a slow viewer is moved forward) and a slow generator lower it. None for fewer
    than 3 chunks.
    """
    if len(arrivals) < 3:
        return None
    ts = [t for t, _ in arrivals]
    ys, total = [], 0
    for _, n in arrivals:
        total += n
        ys.append(total)
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


def passes(step: Step, chunk_s: float, min_ratio: float = 0.95) -> bool:
    """True when `step` kept up: real time within `min_ratio`, p99 within one chunk (`chunk_s`), no error."""
    return (
        step.errors == 0
        and step.p99_s is not None
        and step.p99_s <= chunk_s
        and step.fps_ratio_min >= min_ratio
    )


def ramp(
    sessions: Sequence[int],
    viewers: Sequence[int],
    measure: Callable[[int, int], Step],
    chunk_s: float,
    min_ratio: float = 0.95,
    max_steps: int | None = None,
) -> list[Step]:
    """Run `measure(s, v)` over the ramp; the steps measured, in order.

    For each session count (ascending), viewers per session rise until a step fails; a session
    count that fails with its fewest viewers ends the ramp (more sessions only add load).
    At most `max_steps` steps in all.
    """
    done: list[Step] = []
    for s in sorted(sessions):
        for i, v in enumerate(sorted(viewers)):
            if max_steps is not None and len(done) >= max_steps:
                return done
            step = measure(s, v)
            done.append(step)
            if not passes(step, chunk_s, min_ratio):
                if i == 0:
                    return done
                break
    return done


def find_knee(steps: Sequence[Step], chunk_s: float, min_ratio: float = 0.95) -> dict:
    """The knee of `steps`: the heaviest passing step (most viewers in all, then most sessions), the
    first failing step, and the most viewers per session that passed at each session count."""
    ok = [s for s in steps if passes(s, chunk_s, min_ratio)]
    bad = [s for s in steps if not passes(s, chunk_s, min_ratio)]
    knee = max(ok, key=lambda s: (s.total_viewers, s.sessions)) if ok else None
    frontier: dict[int, int] = {}
    for s in ok:
        frontier[s.sessions] = max(frontier.get(s.sessions, 0), s.viewers)
    return {
        "knee": asdict(knee) if knee else None,
        "first_failure": asdict(bad[0]) if bad else None,
        "max_viewers_per_session": {str(k): v for k, v in sorted(frontier.items())},
        "chunk_s": chunk_s,
        "min_ratio": min_ratio,
    }
