"""The contract between a chunk generator and the session runtime.

`HeliosStreamPipeline` implements it in-process; the Ray layer implements it with a
proxy that drives every rank of a shard group. The runtime (`helios.models.helios`)
only ever talks to this protocol, so the same session logic runs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Transition = Literal["cut", "blend"]


@dataclass
class ChunkResult:
    """One generated chunk: frames ready to show plus what produced them."""

    chunk: int
    """Index of this chunk in the stream (0-based, restarts at 0 after `reset`)."""
    frames: np.ndarray
    """uint8 array of shape (frames_per_chunk, height, width, 3), on the host."""
    prompt: str
    """The prompt whose conditioning produced this chunk (the target prompt while blending)."""
    seed: int
    """The seed in force when this chunk was generated."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Wall time per stage: 'text', 'denoise', 'decode', 'total'."""
    frames_ref: Any = None
    """Where the engine already stored these exact frames (a shard group: rank 0's object-store
    ref), or None. Travels to the sink as `info["frames_ref"]`, so it can hand the frames on
    without copying them again."""


@runtime_checkable
class PendingChunk(Protocol):
    """A chunk whose latents are done and whose frames may still be decoding."""

    chunk: int
    """Index of the chunk (as in `ChunkResult.chunk`)."""

    def result(self) -> ChunkResult:
        """Wait for the frames; the same ChunkResult on every call."""
        ...


@dataclass
class DoneChunk:
    """A PendingChunk that is already complete (engines that decode synchronously)."""

    value: ChunkResult

    @property
    def chunk(self) -> int:
        return self.value.chunk

    def result(self) -> ChunkResult:
        return self.value


class SynchronousEngine:
    """Base for engines that finish each chunk inside `next_chunk()` (no overlap, no text encoder)."""

    chunks_in_flight = 1

    def begin_chunk(self) -> DoneChunk:
        return DoneChunk(self.next_chunk())  # type: ignore[attr-defined]

    def prefetch_prompt(self, prompt: str) -> None:
        """Nothing to warm: these engines encode no text."""


@runtime_checkable
class StreamEngine(Protocol):
    """An endless, controllable chunk generator.

    Every setter takes effect at the next `next_chunk()` call: the generator only reads
    controls at chunk boundaries.
    """

    height: int
    width: int
    frames_per_chunk: int
    fps: int
    chunks_in_flight: int
    """How many begun chunks may be unfinished at once: 1 decodes synchronously; 2 lets the
    decode of chunk n overlap the denoising of chunk n+1."""

    @property
    def chunk_index(self) -> int:
        """Index of the next chunk `next_chunk()` will produce."""
        ...

    def reset(self, seed: int) -> None:
        """Forget all history (and the reference image); the next chunk is chunk 0 drawn with `seed`."""
        ...

    def set_seed(self, seed: int) -> None:
        """Change the noise seed from the next chunk on, keeping history."""
        ...

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        """Condition the next chunks on `prompt` (optionally interpolating embeddings over k chunks)."""
        ...

    def set_image(self, image: np.ndarray | None, transition: Transition = "cut") -> None:
        """Set (uint8 HxWx3, already at the model resolution) or clear (None) the reference image."""
        ...

    def prefetch_prompt(self, prompt: str) -> None:
        """Start encoding `prompt` in the background (only warms the prompt cache; any thread, never blocks)."""
        ...

    def begin_chunk(self) -> PendingChunk:
        """Generate the next chunk's latents; its frames come from the returned handle, in order."""
        ...

    def next_chunk(self) -> ChunkResult:
        """Generate and decode the next chunk (`begin_chunk().result()`)."""
        ...
