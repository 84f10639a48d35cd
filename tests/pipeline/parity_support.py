"""Constants and the diffusers-oracle runner shared by the pipeline parity tests.

A module of its own (not conftest) so tests import it by a unique name: several test
folders have a conftest.py, and `from conftest import ...` picks whichever was loaded last.
"""

from __future__ import annotations

import numpy as np
import torch

PARITY_STEPS = [1, 1, 1]
PARITY_PROMPT = "a red fox running through snow"
OTHER_PROMPT = "a blue whale in the deep sea"


def float64_block_noise(self, batch_size, channel, num_frames, height, width, patch_size=(1, 2, 2), device=None,
                        generator=None):
    """diffusers' sample_block_noise with the covariance factored in float64 (same draws, same layout).

    diffusers 0.42.1 factors it in float32, which strict CPU LAPACK rejects; written here
    independently of helios.pipeline.noise so the parity test checks our layout too.
    """
    gamma = self.scheduler.config.gamma
    _, ph, pw = patch_size
    n = ph * pw
    cov = torch.eye(n, dtype=torch.float64) * (1 + gamma) - torch.ones(n, n, dtype=torch.float64) * gamma
    cov = cov + torch.eye(n, dtype=torch.float64) * 1e-8
    factor = torch.linalg.cholesky(cov).float()
    z = torch.randn(batch_size * channel * num_frames * (height // ph) * (width // pw), n, generator=generator,
                    device=generator.device)
    noise = (z @ factor.T).to(device)
    noise = noise.view(batch_size, channel, num_frames, height // ph, width // pw, ph, pw)
    return noise.permute(0, 1, 2, 3, 5, 4, 6).reshape(batch_size, channel, num_frames, height, width)


def run_reference(pipe, *, chunks: int, seed: int, image: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised latents of every chunk concatenated, float frames in [0, 1]) from diffusers."""
    from PIL import Image

    decoded_inputs: list[torch.Tensor] = []
    original_decode = pipe.vae.decode

    def recording_decode(latents, *args, **kwargs):
        decoded_inputs.append(latents.clone())
        return original_decode(latents, *args, **kwargs)

    pipe.vae.decode = recording_decode
    try:
        out = pipe(
            prompt=PARITY_PROMPT, height=128, width=128, num_frames=33 * chunks, guidance_scale=1.0,
            pyramid_num_inference_steps_list=PARITY_STEPS, generator=torch.Generator().manual_seed(seed),
            output_type="np", image=Image.fromarray(image) if image is not None else None,
        )
    finally:
        del pipe.vae.decode
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    latents = torch.cat([(x - mean) / std for x in decoded_inputs], dim=2)
    return latents, out.frames[0]
