"""Chunk decoding off the critical path: decode chunk n while chunk n+1 denoises.

History lives in latent space, so nothing the next chunk needs waits for the VAE. The
`ChunkDecoder` decodes every submitted chunk exactly once, in submission order, either on
the caller's thread (synchronous, the reference timing) or on one worker thread that, on
CUDA, issues its kernels on its own stream (so the transformer's stream is never blocked
by the decode). The queue is bounded: a submit waits while `max_queued` chunks are already
waiting, which keeps device memory bounded when decoding is the slower side.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

import numpy as np
import torch

from helios.pipeline.vae import VideoCodec

logger = logging.getLogger(__name__)

_CLOSE = object()


@dataclass
class DecodeJob:
    """One chunk's decode: its result is the host uint8 frames (frames, H, W, 3)."""

    seq: int
    latents: torch.Tensor
    ready: "torch.cuda.Event | None" = None
    """CUDA: recorded on the producer's stream after the latents were written."""
    future: Future = field(default_factory=Future)
    decode_ms: float = 0.0
    """Time the decode itself took (device work included)."""
    finished_at: float = 0.0
    """perf_counter() when the frames were on the host."""

    def result(self, timeout: float | None = None) -> np.ndarray:
        return self.future.result(timeout)


def resolve_overlap(setting: str, device: torch.device) -> bool:
    """'on' / 'off' as given; 'auto' overlaps on CUDA only.

    Measured on CPU (bench/bench_pipeline.py, tiny model): the decode is ~97% of a chunk and
    both sides compete for the same cores, so overlapping gains nothing there; on a GPU the
    VAE runs on its own stream next to a transformer that is ~70% of the chunk.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"decode_overlap: expected 'auto', 'on' or 'off', got {setting!r}")
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"


class ChunkDecoder:
    """Decodes chunk latents to host uint8 frames, in order, synchronously or on one worker thread."""

    def __init__(self, codec: VideoCodec, *, overlap: bool, max_queued: int = 1, name: str = "helios-decode"):
        if max_queued < 1:
            raise ValueError(f"max_queued: must be >= 1, got {max_queued}")
        self.codec = codec
        self.device = codec.device
        self.overlap = overlap
        self._seq = 0
        self._last: DecodeJob | None = None
        self._closed = False
        self._stream = None
        self._thread: threading.Thread | None = None
        if overlap:
            if self.device.type == "cuda":
                self._stream = torch.cuda.Stream(device=self.device)
            self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()
        mode = "synchronous" if not overlap else "overlapped, own CUDA stream" if self._stream else "overlapped"
        logger.info("chunk decode: %s on %s", mode, self.device)

    @property
    def decoded(self) -> int:
        """Chunks submitted so far (each is decoded exactly once)."""
        return self._seq

    @property
    def idle(self) -> bool:
        """True when every submitted chunk has been decoded."""
        return self._last is None or self._last.future.done()

    def submit(self, latents: torch.Tensor) -> DecodeJob:
        """Queue one chunk's latents; the job's result comes in submission order."""
        if self._closed:
            raise RuntimeError("chunk decoder is closed")
        job = DecodeJob(seq=self._seq, latents=latents)
        self._seq += 1
        self._last = job
        if not self.overlap:
            self._run(job)
            return job
        if self._stream is not None:
            job.ready = torch.cuda.Event()
            job.ready.record(torch.cuda.current_stream(self.device))
            latents.record_stream(self._stream)  # the allocator must not reuse it while the decode reads it
        self._queue.put(job)
        return job

    def skip(self, height: int, width: int) -> DecodeJob:
        """A finished job with no frames (0, H, W, 3), for a chunk whose frames nobody reads."""
        job = DecodeJob(seq=-1, latents=None)  # type: ignore[arg-type]
        job.finished_at = time.perf_counter()
        job.future.set_result(np.empty((0, height, width, 3), dtype=np.uint8))
        return job

    def drain(self) -> None:
        """Wait until every submitted chunk is decoded (a job's error stays with its owner)."""
        last = self._last
        if last is not None:
            wait_futures([last.future])

    def close(self) -> None:
        """Finish what was submitted and stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_CLOSE)
            self._thread.join()

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _CLOSE:
                return
            self._run(job)

    def _run(self, job: DecodeJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        t0 = time.perf_counter()
        try:
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    self._stream.wait_event(job.ready)
                    frames = self._to_host(self.codec.decode(job.latents))
            else:
                frames = self._to_host(self.codec.decode(job.latents))
        except BaseException as exc:  # noqa: BLE001 - handed to the chunk's owner, who raises it
            job.future.set_exception(exc)
            return
        finally:
            job.latents = None  # type: ignore[assignment]  # free device memory as soon as possible
        job.finished_at = time.perf_counter()
        job.decode_ms = (job.finished_at - t0) * 1000.0
        job.future.set_result(frames)

    def _to_host(self, frames: torch.Tensor) -> np.ndarray:
        if frames.device.type != "cuda":
            return frames.cpu().numpy()
        host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        host.copy_(frames, non_blocking=True)
        torch.cuda.current_stream(frames.device).synchronize()
        return host.numpy()
