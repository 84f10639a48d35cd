"""Helios Serve: the Helios model, its streaming pipeline and the session runtime (no Ray here)."""

__version__ = "0.1.0"
