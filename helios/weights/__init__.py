"""Checkpoint index, `from_pretrained` (per-rank slicing load), tiny checkpoint maker."""

from helios.weights.checkpoint import CheckpointIndex
from helios.weights.loader import from_pretrained

__all__ = ["CheckpointIndex", "from_pretrained"]
