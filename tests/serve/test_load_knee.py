"""The load generator's knee finding (bench/load_knee.py) on synthetic numbers: no Ray, no HTTP."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("load_knee", Path(__file__).resolve().parents[2] / "bench" / "load_knee.py")
knee = importlib.util.module_from_spec(_SPEC)
sys.modules["load_knee"] = knee
_SPEC.loader.exec_module(knee)

CHUNK_S = 33 / 24


def synthetic(capacity: int):
    """A server that keeps up with up to `capacity` viewers in all and falls behind beyond."""
    calls = []

    def measure(s: int, v: int):
        calls.append((s, v))
        over = s * v > capacity
        return knee.Step(s, v, 0.8 if over else 1.0, 2.0 if over else 0.05)

    return measure, calls


def test_passes_needs_real_time_p99_within_a_chunk_and_no_error():
    ok = knee.Step(1, 1, 0.99, 0.2)
    assert knee.passes(ok, CHUNK_S)
    assert not knee.passes(knee.Step(1, 1, 0.94, 0.2), CHUNK_S)  # below 0.95 of real time
    assert not knee.passes(knee.Step(1, 1, 1.0, CHUNK_S + 0.01), CHUNK_S)  # p99 over one chunk
    assert knee.passes(knee.Step(1, 1, 0.95, CHUNK_S), CHUNK_S)  # both bounds inclusive
    assert not knee.passes(knee.Step(1, 1, 1.0, 0.1, errors=1), CHUNK_S)
    assert not knee.passes(knee.Step(1, 1, 1.0, None), CHUNK_S)  # no chunk arrived


def test_ramp_stops_viewers_at_the_first_failure_and_sessions_when_one_viewer_fails():
    measure, calls = synthetic(capacity=16)
    steps = knee.ramp([1, 2, 4, 8, 16], [1, 4, 16], measure, CHUNK_S)
    # 1x16 ok; 2x16 fails (so 2 stops there); 4x4 ok, 4x16 fails; 8x4 fails; 16x1 ok, 16x4 fails. 32 never.
    assert calls == [(1, 1), (1, 4), (1, 16), (2, 1), (2, 4), (2, 16), (4, 1), (4, 4), (4, 16),
                     (8, 1), (8, 4), (16, 1), (16, 4)]
    result = knee.find_knee(steps, CHUNK_S)
    assert result["knee"]["sessions"] == 16 and result["knee"]["viewers"] == 1  # 16 viewers, most sessions
    assert result["first_failure"]["sessions"] == 2 and result["first_failure"]["viewers"] == 16
    assert result["max_viewers_per_session"] == {"1": 16, "2": 4, "4": 4, "8": 1, "16": 1}

    measure, calls = synthetic(capacity=3)
    steps = knee.ramp([1, 2, 4, 8], [1, 4, 16], measure, CHUNK_S)
    assert calls == [(1, 1), (1, 4), (2, 1), (2, 4), (4, 1)]  # 4 sessions fail with 1 viewer: the end
    assert knee.find_knee(steps, CHUNK_S)["knee"] == {"sessions": 2, "viewers": 1, "fps_ratio_min": 1.0,
                                                      "p99_s": 0.05, "errors": 0}
    measure, calls = synthetic(capacity=100)
    assert len(knee.ramp([1, 2, 4], [1, 4, 16], measure, CHUNK_S, max_steps=4)) == 4 and len(calls) == 4


def test_no_passing_step_has_no_knee_and_percentiles_interpolate():
    assert knee.find_knee([knee.Step(1, 1, 0.5, 3.0)], CHUNK_S)["knee"] is None
    assert knee.percentile([], 99) is None
    assert knee.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert knee.percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    with pytest.raises(ValueError):
        knee.percentile([1.0], 101)


def test_delivered_fps_is_the_slope_of_frames_against_arrival_time():
    regular = [(i * CHUNK_S, 33) for i in range(8)]
    assert knee.delivered_fps(regular) == pytest.approx(24.0)
    # One chunk a third of a chunk late moves the fit by a few percent, not the ~15% of first-to-last.
    jittered = list(regular)
    jittered[1] = (jittered[1][0] + CHUNK_S / 3, 33)
    assert knee.delivered_fps(jittered) == pytest.approx(24.0, rel=0.05)
    # Every other chunk skipped (a slow viewer moved forward): half the frames per second.
    assert knee.delivered_fps(regular[::2]) == pytest.approx(12.0)
    assert knee.delivered_fps(regular[:2]) is None
