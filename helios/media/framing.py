"""msgpack stream framing for programs: raw frames plus metadata, one map per chunk, then an end (or interrupted) map."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgpack
import numpy as np

from helios.media.mp4 import check_frames


def pack_chunk(
    frames: np.ndarray,
    *,
    chunk: int,
    first_frame: int,
    prompt: str | None,
    fps: float,
    timing: dict | None = None,
    produced_at: float | None = None,
) -> bytes:
    """One chunk as a msgpack map `{"type": "chunk", "chunk", "first_frame", "shape", "dtype", "frames", "prompt", "fps"}`.

    `timing` (chunk 0 only): wall-clock stamps of the session's way to its first frame, so a
    program can break its time to first frame down (bench/bench_interactivity.py).
    `produced_at`: when the session handed the chunk out (Unix seconds), so a viewer measures its
    own chunk latency (bench/bench_load.py); absent when unknown.
    """
    check_frames(frames)
    extra: dict = {"timing": timing} if timing else {}
    if produced_at is not None:
        extra["produced_at"] = float(produced_at)
    return msgpack.packb(
        {
            "type": "chunk",
            "chunk": int(chunk),
            "first_frame": int(first_frame),
            "shape": [int(n) for n in frames.shape],
            "dtype": "uint8",
            "frames": np.ascontiguousarray(frames).tobytes(),
            "prompt": prompt,
            "fps": fps,
            **extra,
        },
        use_bin_type=True,
    )


def pack_end(reason: str | None) -> bytes:
    """The last map of a stream: `{"type": "end", "reason"}`."""
    return msgpack.packb({"type": "end", "reason": reason}, use_bin_type=True)


def pack_interrupted(reason: str) -> bytes:
    """The last map of a stream cut short while its session goes on: `{"type": "interrupted", "reason"}`.

    Not an end: reconnect with `from=<last chunk received + 1>` (resumed while that chunk is
    still in the relay's window). Readers that know only "chunk" and "end" skip it.
    """
    return msgpack.packb({"type": "interrupted", "reason": reason}, use_bin_type=True)


def unpack_stream(pieces: Iterable[bytes]) -> Iterator[dict]:
    """The maps of a msgpack stream, whatever the byte boundaries of `pieces`."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 31)
    for piece in pieces:
        unpacker.feed(piece)
        yield from unpacker


def frames_of(message: dict) -> np.ndarray:
    """The uint8 (N, H, W, 3) frames of a chunk map."""
    if message.get("type") != "chunk":
        raise ValueError(f"message type {message.get('type')!r} is not 'chunk'")
    if message.get("dtype") != "uint8":
        raise ValueError(f"dtype {message.get('dtype')!r} is not 'uint8'")
    return np.frombuffer(message["frames"], dtype=np.uint8).reshape(message["shape"])
