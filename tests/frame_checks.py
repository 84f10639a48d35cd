"""Non-vacuity of frame-level comparisons of the tiny model (DESIGN section 9).

A frame tolerance of about one level only means something when another seed or prompt
moves the frames by far more; every frame-level parity or identity test asserts that next
to its tolerance with these helpers.
"""

from __future__ import annotations

import numpy as np

CLEAR_MARGIN_LEVELS = 20.0
"""Another seed or prompt must move the tiny model's frames by more than this (mean |diff|, levels of 255)."""


def mean_level_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 videos (the common leading frames), in levels of 255."""
    n = min(len(a), len(b))
    return float(np.abs(a[:n].astype(np.float64) - b[:n].astype(np.float64)).mean())


def assert_differs_clearly(frames: np.ndarray, other: np.ndarray, what: str) -> None:
    """`other` (made with another seed or prompt) is far from `frames`: the comparison next to this can fail."""
    diff = mean_level_diff(frames, other)
    assert diff > CLEAR_MARGIN_LEVELS, f"{what} moves frames by only {diff:.1f} levels: a frame tolerance would be vacuous"
