"""Seeded noise: Gaussian latents and the correlated 2x2 block noise of the pyramid re-noise."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=8)
def block_noise_factor(gamma: float, block_size: int) -> torch.Tensor:
    """Cholesky factor of (1+gamma) I - gamma J + 1e-8 I, built in float64 then cast to float32.

    The covariance has an exact zero eigenvalue; in float32 the 1e-8 ridge rounds away and a
    strict LAPACK rejects it (DESIGN section 9), in float64 the ridge is representable.
    """
    eye = torch.eye(block_size, dtype=torch.float64)
    cov = eye * (1 + gamma) - torch.ones(block_size, block_size, dtype=torch.float64) * gamma + eye * 1e-8
    return torch.linalg.cholesky(cov).to(torch.float32)


def sample_block_noise(
    shape: tuple[int, int, int, int, int],
    *,
    gamma: float,
    patch_hw: tuple[int, int],
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Noise whose values are correlated within each (ph, pw) spatial block, drawn from `generator`.

    Draw order and layout match the reference pipeline so a shared seed gives identical noise.
    """
    b, c, f, h, w = shape
    ph, pw = patch_hw
    factor = block_noise_factor(float(gamma), ph * pw).to(generator.device)
    blocks = b * c * f * (h // ph) * (w // pw)
    z = torch.randn(blocks, ph * pw, generator=generator, device=generator.device)
    noise = (z @ factor.T).to(device)
    noise = noise.view(b, c, f, h // ph, w // pw, ph, pw).permute(0, 1, 2, 3, 5, 4, 6)
    return noise.reshape(b, c, f, h, w)


def randn(shape, *, generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (as diffusers' randn_tensor does), then moved."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def uniform(lo: float, hi: float, n: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """`n` values uniform in [lo, hi) drawn from `generator` on `device`."""
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo
