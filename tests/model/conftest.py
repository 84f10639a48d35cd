"""Shared, session-scoped fixtures of the model tests: tiny random checkpoints and seeded inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helios.config import HeliosConfig
from helios.weights.tiny import make_tiny_transformer

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


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The DESIGN test config (2 heads), single safetensors file."""
    return make_tiny_transformer(tmp_path_factory.mktemp("tiny-transformer"), HeliosConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def tp_ckpt(tmp_path_factory) -> Path:
    """4-head tiny checkpoint saved by diffusers' save_pretrained in several shards."""
    return make_tiny_transformer(tmp_path_factory.mktemp("tp-transformer"), TP_CONFIG, seed=3, max_shard_size="300KB")


@pytest.fixture(scope="session")
def diffusers_ref():
    """Load a checkpoint with diffusers (the numerical oracle)."""
    from diffusers import HeliosTransformer3DModel

    def load(path: Path, dtype: torch.dtype = torch.float32):
        return HeliosTransformer3DModel.from_pretrained(path, torch_dtype=dtype).eval()

    return load
