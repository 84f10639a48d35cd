"""The interactive chunked Helios generator: history memory, pyramid stages, text cache, VAE decode."""

from __future__ import annotations

from helios.pipeline.engine import ChunkResult, StreamEngine, Transition

__all__ = ["ChunkResult", "HeliosStreamPipeline", "StreamEngine", "Transition"]


def __getattr__(name: str):
    # Lazy: importing the protocol must not pull in torch/diffusers for light users (the runtime tests).
    if name == "HeliosStreamPipeline":
        from helios.pipeline.stream import HeliosStreamPipeline

        return HeliosStreamPipeline
    raise AttributeError(f"module 'helios.pipeline' has no attribute {name!r}")
