"""Quality check of a fast path against the reference path on the same seed and prompt.

`fp8_quality(pipe, ...)` streams N chunks with the pipeline as loaded (bf16 on GPU: the
reference), converts its transformer's linears to FP8 in place, streams the same N chunks
again and reports the PSNR of the decoded frames per chunk (target >= 35 dB over 10 chunks
on the 14B model) and the SNR of the denoised latents. A baseline, the same reference with
another seed, shows what "different video" scores, so a high PSNR means something.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from helios.model.fp8 import DEFAULT_SKIP, convert_linears

logger = logging.getLogger(__name__)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 frame arrays (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def snr(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Signal-to-noise ratio in dB of `got` against `expected` (inf when equal)."""
    noise = (got.double() - expected.double()).norm().item()
    return math.inf if noise == 0 else 20.0 * math.log10(expected.double().norm().item() / noise)


@dataclass
class StreamRun:
    """Frames and denoised latents of the first chunks of one stream."""

    frames: list[np.ndarray] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)


@dataclass
class QualityReport:
    """Per-chunk PSNR (frames) and SNR (latents) of the candidate against the reference."""

    chunks: int
    psnr_db: list[float]
    latent_snr_db: list[float]
    baseline_psnr_db: float
    """Chunk 0 of the reference with seed+1 against seed: what unrelated video scores."""
    baseline_latent_snr_db: float

    @property
    def mean_psnr_db(self) -> float:
        return float(np.mean(self.psnr_db))

    @property
    def min_psnr_db(self) -> float:
        return float(np.min(self.psnr_db))

    def as_dict(self) -> dict:
        return {"chunks": self.chunks, "mean_psnr_db": round(self.mean_psnr_db, 2),
                "min_psnr_db": round(self.min_psnr_db, 2), "psnr_db": [round(p, 2) for p in self.psnr_db],
                "latent_snr_db": [round(s, 2) for s in self.latent_snr_db],
                "baseline_psnr_db": round(self.baseline_psnr_db, 2),
                "baseline_latent_snr_db": round(self.baseline_latent_snr_db, 2)}


def run_stream(pipe, *, prompt: str, seed: int, chunks: int) -> StreamRun:
    """Reset `pipe` to `seed`, set `prompt` and collect `chunks` chunks."""
    pipe.reset(seed)
    pipe.set_prompt(prompt)
    run = StreamRun()
    for _ in range(chunks):
        run.frames.append(pipe.next_chunk().frames)
        run.latents.append(pipe.last_latents.detach().float().cpu().clone())
    return run


def compare_runs(reference: StreamRun, candidate: StreamRun, baseline: StreamRun) -> QualityReport:
    """PSNR/SNR per chunk of `candidate` vs `reference`; `baseline` is another seed's chunk 0."""
    return QualityReport(
        chunks=len(reference.frames),
        psnr_db=[psnr(c, r) for c, r in zip(candidate.frames, reference.frames)],
        latent_snr_db=[snr(c, r) for c, r in zip(candidate.latents, reference.latents)],
        baseline_psnr_db=psnr(baseline.frames[0], reference.frames[0]),
        baseline_latent_snr_db=snr(baseline.latents[0], reference.latents[0]),
    )


def fp8_quality(pipe, *, chunks: int = 10, seed: int = 0, prompt: str = "a red fox running through snow",
                recipe: str = "rowwise", gemm: str = "auto", skip: tuple[str, ...] | list[str] = DEFAULT_SKIP,
                ) -> QualityReport:
    """Reference stream, then FP8 conversion of `pipe.transformer` IN PLACE, then the same stream."""
    reference = run_stream(pipe, prompt=prompt, seed=seed, chunks=chunks)
    baseline = run_stream(pipe, prompt=prompt, seed=seed + 1, chunks=1)
    convert_linears(pipe.transformer, skip=skip, recipe=recipe, gemm=gemm)  # type: ignore[arg-type]
    candidate = run_stream(pipe, prompt=prompt, seed=seed, chunks=chunks)
    report = compare_runs(reference, candidate, baseline)
    logger.info("fp8 quality over %d chunks: mean PSNR %.2f dB (min %.2f), baseline %.2f dB", chunks,
                report.mean_psnr_db, report.min_psnr_db, report.baseline_psnr_db)
    return report
