"""Seeded forward inputs and checkpoint configs shared by the model tests (a uniquely named
module, so it never collides with another area's helpers on sys.path)."""

from __future__ import annotations

import torch

from helios.config import HeliosConfig

# The TP checkpoint: 4 heads so TP=4 divides them; history-key amplification on so its
# per-head sharding is exercised too. Sharded on disk like a published checkpoint.
TP_CONFIG = HeliosConfig.tiny(num_attention_heads=4, is_amplify_history=True)


def make_inputs(batch: int = 1, *, seed: int = 1, history: bool = True, latent_hw: int = 8) -> dict:
    """Forward kwargs shaped like a pyramid stage: current latents at `latent_hw`, history at 16x16."""
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(
        hidden_states=torch.randn(batch, 16, 3, latent_hw, latent_hw, generator=g),
        timestep=torch.tensor([700, 300][:batch] if batch <= 2 else [500] * batch),
        encoder_hidden_states=torch.randn(batch, 7, 32, generator=g),
        indices_hidden_states=torch.tensor([[19, 20, 21]]).expand(batch, -1),
    )
    if history:
        kwargs.update(
            latents_history_short=torch.randn(batch, 16, 2, 16, 16, generator=g),
            indices_latents_history_short=torch.tensor([[0, 18]]).expand(batch, -1),
            latents_history_mid=torch.randn(batch, 16, 2, 16, 16, generator=g),
            indices_latents_history_mid=torch.tensor([[16, 17]]).expand(batch, -1),
            latents_history_long=torch.randn(batch, 16, 16, 16, 16, generator=g),
            indices_latents_history_long=torch.arange(16).unsqueeze(0).expand(batch, -1),
        )
    return kwargs
