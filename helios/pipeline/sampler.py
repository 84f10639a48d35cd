"""Denoise one chunk: pyramid stages low->full resolution, block-noise re-noise, DMD or CFG steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helios.model import HeliosTransformer
from helios.pipeline.config import StreamConfig
from helios.pipeline.history import HistoryViews
from helios.pipeline.noise import sample_block_noise


def shift_mu(seq_len: int, base_len: int = 256, max_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Resolution-dependent time shift: linear in the token count between two anchor points."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * slope + (base_shift - slope * base_len)


def cfg_zero_star_scale(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Per-sample projection coefficient <cond, uncond> / |uncond|^2 (CFG-Zero*)."""
    cond, uncond = cond.float(), uncond.float()
    return (cond * uncond).sum(dim=1, keepdim=True) / ((uncond**2).sum(dim=1, keepdim=True) + 1e-8)


@dataclass
class Conditioning:
    """Text conditioning for one chunk (negative only when CFG runs)."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None = None


class PyramidSampler:
    """Runs the pyramid schedule of one chunk with a diffusers Helios scheduler (DMD or UniPC)."""

    def __init__(self, transformer: HeliosTransformer, scheduler, config: StreamConfig, *, patch_size: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device):
        self.transformer = transformer
        self.scheduler = scheduler
        self.config = config
        self.patch_size = tuple(patch_size)
        self.dtype = dtype
        self.device = device
        self.is_dmd = type(scheduler).__name__ == "HeliosDMDScheduler"

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, history: HistoryViews, cond: Conditioning, *, generator: torch.Generator,
               first_chunk: bool) -> torch.Tensor:
        """Full-resolution noise (1, C, F, H, W) float32 -> denoised chunk latents."""
        cfg = self.config
        steps = cfg.pyramid_steps
        stages = len(steps)
        amplify = cfg.is_amplify_first_chunk and first_chunk and self.is_dmd
        b, c, f, h, w = noise.shape

        # 1. Start at the lowest pyramid level: bilinear halvings, x2 keeps the noise variance.
        latents = noise.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        ph, pw = h, w
        for _ in range(stages - 1):
            ph, pw = ph // 2, pw // 2
            latents = F.interpolate(latents, size=(ph, pw), mode="bilinear") * 2
        latents = latents.reshape(b, f, c, ph, pw).permute(0, 2, 1, 3, 4)
        start_points = [latents] if self.is_dmd else None

        history_short = history.short.to(self.dtype)
        history_mid = history.mid.to(self.dtype)
        history_long = history.long.to(self.dtype)
        for stage in range(stages):
            # 2. This stage's timesteps, shifted for its token count.
            seq_len = (latents.shape[-1] * latents.shape[-2] * latents.shape[-3]) // math.prod(self.patch_size)
            sched_cfg = self.scheduler.config
            mu = shift_mu(seq_len, sched_cfg.get("base_image_seq_len", 256), sched_cfg.get("max_image_seq_len", 4096),
                          sched_cfg.get("base_shift", 0.5), sched_cfg.get("max_shift", 1.15))
            self.scheduler.set_timesteps(steps[stage], stage, device=self.device, mu=mu, is_amplify_first_chunk=amplify)
            timesteps = self.scheduler.timesteps

            # 3. Upsample (nearest) and re-noise with block noise so 2x2 blocks stay unbiased.
            if stage > 0:
                ph, pw = ph * 2, pw * 2
                latents = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, ph // 2, pw // 2)
                latents = F.interpolate(latents, size=(ph, pw), mode="nearest")
                latents = latents.reshape(b, f, c, ph, pw).permute(0, 2, 1, 3, 4)
                signal = 1 - self.scheduler.ori_start_sigmas[stage]
                gamma = sched_cfg.gamma
                alpha = 1 / (math.sqrt(1 + (1 / gamma)) * (1 - signal) + signal)
                beta = alpha * (1 - signal) / math.sqrt(gamma)
                block = sample_block_noise(tuple(latents.shape), gamma=gamma, patch_hw=self.patch_size[1:],
                                           generator=generator, device=self.device)
                latents = alpha * latents + beta * block.to(device=self.device, dtype=self.dtype)
                if start_points is not None:
                    start_points.append(latents)

            # 4. Denoising steps of this stage.
            for i, t in enumerate(timesteps):
                timestep = t.expand(latents.shape[0]).to(torch.int64)
                model_in = latents.to(self.dtype)
                kwargs = dict(
                    hidden_states=model_in,
                    timestep=timestep,
                    indices_hidden_states=history.indices_hidden,
                    indices_latents_history_short=history.indices_short,
                    indices_latents_history_mid=history.indices_mid,
                    indices_latents_history_long=history.indices_long,
                    latents_history_short=history_short,
                    latents_history_mid=history_mid,
                    latents_history_long=history_long,
                )
                pred = self.transformer(encoder_hidden_states=cond.prompt_embeds, **kwargs)
                if cfg.do_cfg:
                    uncond = self.transformer(encoder_hidden_states=cond.negative_embeds, **kwargs)
                    pred = self._guide(pred, uncond, stage, i)
                if self.is_dmd:
                    latents = self.scheduler.step(
                        pred, t, latents, generator=generator, return_dict=False, cur_sampling_step=i,
                        dmd_noisy_tensor=start_points[stage], dmd_sigmas=self.scheduler.sigmas,
                        dmd_timesteps=self.scheduler.timesteps, all_timesteps=timesteps,
                    )[0]
                else:
                    latents = self.scheduler.step(pred, t, latents, generator=generator, return_dict=False)[0]
        return latents

    def _guide(self, cond: torch.Tensor, uncond: torch.Tensor, stage: int, step: int) -> torch.Tensor:
        cfg = self.config
        if not cfg.is_cfg_zero_star:
            return uncond + cfg.guidance_scale * (cond - uncond)
        b = cond.shape[0]
        scale = cfg_zero_star_scale(cond.view(b, -1), uncond.view(b, -1))
        scale = scale.view(b, *([1] * (cond.ndim - 1))).to(cond.dtype)
        if cfg.use_zero_init and stage == 0 and step <= cfg.zero_steps:
            return cond * 0.0
        return uncond * scale + cfg.guidance_scale * (cond - uncond * scale)

