"""Wan VAE at the stream boundary: images/videos in (normalised latents), chunks out (uint8 frames)."""

from __future__ import annotations

import numpy as np
import torch

from helios.pipeline.noise import randn, uniform


class VideoCodec:
    """Encodes reference images and input clips, decodes one chunk's latents to uint8 frames."""

    def __init__(self, vae, *, device: torch.device, chunk_latent_frames: int):
        self.vae = vae
        self.device = device
        self.chunk_latent_frames = chunk_latent_frames
        self.temporal = int(vae.config.scale_factor_temporal)
        z = int(vae.config.z_dim)
        # Normalisation and the pixel conversion run in float32 whatever the VAE dtype (a bf16 VAE
        # only changes the convolutions; the reference's own RMS norms upcast internally).
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1).to(device)
        self.inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1).to(device)

    @property
    def chunk_frames(self) -> int:
        return (self.chunk_latent_frames - 1) * self.temporal + 1

    def to_pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (1, 3, N, H, W) in [-1, 1] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.to(torch.float32) / 255.0
        x = x * 2.0 - 1.0
        return x.permute(3, 0, 1, 2).unsqueeze(0).to(self.vae.dtype)

    def _encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        latents = self.vae.encode(pixels).latent_dist.sample(generator=generator)
        return (latents.float() - self.mean) * self.inv_std

    @torch.no_grad()
    def encode_image(self, image: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference image -> (anchor latent, 'fake' history latent of the image held still for a chunk)."""
        pixels = self.to_pixels(image[None])  # (1, 3, 1, H, W)
        latent = self._encode(pixels, generator)
        still = pixels.repeat(1, 1, self.chunk_frames, 1, 1)
        fake = self._encode(still, generator)[:, :, -1:]
        return latent.float(), fake.float()

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Input clip (N >= one chunk of frames) -> (first-frame latent, latents of its last whole chunks)."""
        n = frames.shape[0]
        per_chunk = self.chunk_frames
        chunks = n // per_chunk
        if chunks == 0:
            raise ValueError(f"video: needs at least {per_chunk} frames (one chunk), got {n}")
        pixels = self.to_pixels(frames)
        first = self._encode(pixels[:, :, 0:1], generator)
        start = n - chunks * per_chunk
        parts = [self._encode(pixels[:, :, start + i * per_chunk: start + (i + 1) * per_chunk], generator)
                 for i in range(chunks)]
        return first.float(), torch.cat(parts, dim=2).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Chunk latents (1, C, F, h, w) -> uint8 (frames, H, W, 3), still on the device."""
        latents = (latents.float() / self.inv_std + self.mean).to(self.vae.dtype)
        video = self.vae.decode(latents, return_dict=False)[0].float()  # (1, 3, frames, H, W) in [-1, 1]
        video = (video / 2 + 0.5).clamp(0, 1)
        return (video[0].permute(1, 2, 3, 0) * 255.0).round().to(torch.uint8)


def noise_latents(latents: torch.Tensor, sigma_range: tuple[float, float], *, generator: torch.Generator,
                  device: torch.device, per_frame: bool = False) -> torch.Tensor:
    """Mix conditioning latents with Gaussian noise at a random sigma (one per tensor or per frame)."""
    lo, hi = sigma_range
    if per_frame:
        frames = latents.shape[2]
        sigma = uniform(lo, hi, frames, generator=generator, device=device).view(1, 1, frames, 1, 1)
    else:
        sigma = uniform(lo, hi, 1, generator=generator, device=device)
    return sigma * randn(latents.shape, generator=generator, device=device) + (1 - sigma) * latents
