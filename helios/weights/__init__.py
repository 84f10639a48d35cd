"""Checkpoint index, per-rank slicing loader, tiny checkpoint maker."""

from helios.weights.checkpoint import CheckpointIndex
from helios.weights.loader import LoadReport, load_transformer, load_weights, materialize_

__all__ = ["CheckpointIndex", "LoadReport", "load_transformer", "load_weights", "materialize_"]
