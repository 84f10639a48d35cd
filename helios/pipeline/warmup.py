"""Apply the transformer fast path to a built pipeline and warm its compiled graphs.

Warm-up runs one dummy chunk's denoising (every pyramid stage shape, the CFG branch when the
config uses it, the same history geometry as a real chunk) on zero text embeddings with its own
generator, so torch.compile traces every shape when the group is created and a session's first
chunk never compiles. The pipeline's generator, memory and prompt cache are untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from helios.model.fast import FastPathConfig, FastPathReport, apply_fast_path
from helios.pipeline.sampler import Conditioning

logger = logging.getLogger(__name__)


@dataclass
class WarmupReport:
    """Stage shapes the warm-up ran through and how long it took."""

    stage_shapes: list[tuple[int, ...]] = field(default_factory=list)
    seconds: float = 0.0


def stage_shapes(channels: int, frames: int, latent_hw: tuple[int, int], stages: int) -> list[tuple[int, ...]]:
    """(1, C, F, h, w) of the current latents at each pyramid stage, lowest resolution first."""
    h, w = latent_hw
    return [(1, channels, frames, h // 2 ** (stages - 1 - s), w // 2 ** (stages - 1 - s)) for s in range(stages)]


def prepare_fast_path(pipe, config: FastPathConfig) -> tuple[FastPathReport, WarmupReport | None]:
    """Apply `config` to `pipe.transformer` (in place) and, when compiling, warm every stage shape."""
    report = apply_fast_path(pipe.transformer, config, device=pipe.device, dtype=pipe.dtype)
    warm = warm_up(pipe) if config.compile else None
    return report, warm


@torch.no_grad()
def warm_up(pipe) -> WarmupReport:
    """Run one dummy chunk through the sampler: every stage shape (and CFG branch) executes once."""
    cfg = pipe.config
    text_dim = pipe.transformer.config.text_dim
    t0 = time.perf_counter()
    generator = torch.Generator(device=pipe.device).manual_seed(0)
    shape = (1, pipe.channels, cfg.num_latent_frames_per_chunk, *pipe.latent_hw)
    noise = torch.randn(shape, generator=generator, device=pipe.device)
    embeds = torch.zeros(1, cfg.max_sequence_length, text_dim, device=pipe.device, dtype=pipe.dtype)
    cond = Conditioning(prompt_embeds=embeds, negative_embeds=embeds if cfg.do_cfg else None)
    views = pipe.memory.views(pipe.dtype)
    pipe.sampler.sample(noise, views, cond, generator=generator, first_chunk=True)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
    report = WarmupReport(
        stage_shapes=stage_shapes(pipe.channels, cfg.num_latent_frames_per_chunk, pipe.latent_hw,
                                  len(cfg.pyramid_steps)),
        seconds=time.perf_counter() - t0,
    )
    logger.info("fast: warmed %d stage shapes %s in %.1fs", len(report.stage_shapes),
                [s[2:] for s in report.stage_shapes], report.seconds)
    return report
